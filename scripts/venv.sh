# Sourced by scripts/bootstrap.sh and scripts/install.sh (bash): is a venv usable where it is?
#
# A venv is not relocatable: pyvenv.cfg names the interpreter it was made from, and every script
# in bin/ names bin/python by its absolute path. A venv copied along with a checkout (cp -r .
# /opt/portvakt) therefore still runs the original's code; a venv made from a Python that later
# changed minor version, or from one another user cannot read (pyenv under /root), is no better.

# venv_mismatch VENV PYTHON: succeeds silently when VENV was made at its own path from PYTHON's
# interpreter; otherwise prints one line saying why not and fails. Reads files only (plus one
# start of PYTHON): fast enough for every `make`.
venv_mismatch() {
    local venv=$1 python=$2 cfg made home version want f first second target
    local -a here
    cfg=$venv/pyvenv.cfg
    if [[ ! -f $cfg || ! -x $venv/bin/python ]]; then
        echo "it has no pyvenv.cfg or no working bin/python"
        return 1
    fi
    # A folder reached through a symlink has two names; pip writes the one it was given.
    here=("$(cd "$venv" && pwd -L)" "$(cd "$venv" && pwd -P)")
    # Python 3.11+ records the command that made the venv; its last word is the venv's path.
    made=$(sed -n 's/^command = .* \([^ ]*\)$/\1/p' "$cfg")
    if [[ -n $made && $made != "${here[0]}" && $made != "${here[1]}" ]]; then
        echo "its pyvenv.cfg says it was made as $made"
        return 1
    fi
    home=$(sed -n 's/^home = //p' "$cfg")
    version=$(sed -n 's/^version\(_info\)\{0,1\} = \([0-9]*\.[0-9]*\).*/\2/p' "$cfg")
    want=$("$python" -c 'import os, sys; print(os.path.dirname(sys.executable), "%d.%d" % sys.version_info[:2])') \
        || { echo "$python does not run"; return 1; }
    if [[ $home != "${want% *}" ]]; then
        echo "it was made from the Python in $home, not $python"
        return 1
    fi
    if [[ $version != "${want#* }" ]]; then
        echo "it was made for Python $version, $python is ${want#* }"
        return 1
    fi
    for f in "$venv"/bin/*; do
        [[ -f $f && ! -L $f ]] || continue
        { IFS= read -r first; IFS= read -r second; } < "$f" 2>/dev/null || true
        case $first in
            '#!/bin/sh')  # pip's form for long paths: '''exec' "/path/bin/python" "$0" "$@"
                target=${second#"'''exec' \""}; target=${target%%\"*} ;;
            '#!'*python*) target=${first#'#!'}; target=${target%% *} ;;
            *) continue ;;
        esac
        [[ $target == */bin/python* ]] || continue
        if [[ $target != "${here[0]}/bin/"* && $target != "${here[1]}/bin/"* ]]; then
            echo "its script bin/${f##*/} runs $target"
            return 1
        fi
    done
    return 0
}
