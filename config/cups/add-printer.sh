#!/bin/sh
# Create the print-release queues on the gateway's cupsd (CUPS 2.4), as root.
#
#   add-printer.sh printer NAME ipp://PRINTER-ADDRESS/ipp/print [findme-only]  # a physical printer
#   add-printer.sh findme [NAME]                                   # the find-me queue (default findme)
#
# findme-only: only the gateway's account ($GATEWAY_USER, default portvakt) may submit to the
# printer queue itself, so users print to the find-me queue only and no client can ask a printer
# queue not to hold its job (job-hold-until=no-hold); the gateway still moves jobs into it.
#
# A printer queue is driverless PDF: cupsd asks the printer for its IPP Everywhere attributes
# (lpadmin -m everywhere), then the generated PPD's PDF line is changed so that PDF goes to the
# printer as submitted instead of through pdftopdf (which rewrites it). Other formats (text,
# images, PostScript) are still converted to PDF first. The printer must list application/pdf in
# its document-format-supported. Every queue holds new jobs until the gateway releases them.
#
# The find-me queue is stopped (disabled) but accepts jobs; cupsd keeps it stopped across
# restarts. Its device never prints: jobs leave it only when the gateway moves them. It is made
# with the PPD of the first printer queue, so create a printer queue first.
#
# Run it over cupsd's domain socket (the default for root on Debian), where root is known by its
# peer credentials: the shipped cupsd.conf demands authentication for administration. For another
# cupsd set CUPS_SERVER (its socket) and PPD_DIR (ServerRoot/ppd).
set -eu

PPD_DIR=${PPD_DIR:-/etc/cups/ppd}
FINDME_DEVICE="ipp://localhost:9/portvakt-findme-never-prints"
HOLD="-o job-hold-until-default=indefinite"

die() { echo "add-printer.sh: $*" >&2; exit 2; }

PDF_LINE='^\*cupsFilter2: "application/vnd.cups-pdf application/pdf [0-9]* -"$'

driverless_ppd() {  # queue -> a driverless PDF PPD on stdout
    ppd="$PPD_DIR/$1.ppd"
    # cupsd writes the generated PPD a moment after lpadmin returns; when the queue existed
    # before (re-run), the old, already edited PPD is there meanwhile: wait for the new one.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        [ -s "$ppd" ] && grep -q "$PDF_LINE" "$ppd" && break
        sleep 1
    done
    [ -s "$ppd" ] || die "no PPD for $1 in $PPD_DIR: did the printer answer IPP Everywhere?"
    grep -q "$PDF_LINE" "$ppd" \
        || die "$1: the printer does not take PDF (no application/pdf in its PPD)"
    sed 's#^\*cupsFilter2: "application/vnd.cups-pdf application/pdf [0-9]* -"$#*cupsFilter2: "application/pdf application/pdf 0 -"#' "$ppd"
}

case "${1:-}" in
printer)
    [ $# -eq 3 ] || { [ $# -eq 4 ] && [ "$4" = findme-only ]; } \
        || die "usage: add-printer.sh printer NAME ipp://PRINTER/ipp/print [findme-only]"
    name=$2 uri=$3
    lpadmin -p "$name" -v "$uri" -m everywhere
    tmp=$(mktemp)
    trap 'rm -f "$tmp"' EXIT
    driverless_ppd "$name" >"$tmp"
    # shellcheck disable=SC2086
    lpadmin -p "$name" -E -P "$tmp" -o printer-error-policy=abort-job $HOLD
    if [ "${4:-}" = findme-only ]; then
        lpadmin -p "$name" -u "allow:${GATEWAY_USER:-portvakt}"
        echo "$name: only ${GATEWAY_USER:-portvakt} may submit here; users print to the find-me queue"
    fi
    echo "$name: driverless PDF queue for $uri, holding new jobs"
    ;;
findme)
    name=${2:-findme}
    first=$(lpstat -v 2>/dev/null | grep -v "$FINDME_DEVICE" \
        | sed -n 's/^device for \([^:]*\): ipp.*/\1/p' | grep -vx "$name" | head -n 1)
    [ -n "$first" ] || die "create a printer queue first (its PPD is reused)"
    # shellcheck disable=SC2086
    lpadmin -p "$name" -E -v "$FINDME_DEVICE" -P "$PPD_DIR/$first.ppd" $HOLD
    cupsdisable -r "find-me queue: jobs wait here for release at any printer" "$name"
    echo "$name: stopped find-me queue (accepting jobs), holding new jobs"
    ;;
*)
    die "usage: add-printer.sh printer NAME ipp://PRINTER/ipp/print [findme-only] | add-printer.sh findme [NAME]"
    ;;
esac
