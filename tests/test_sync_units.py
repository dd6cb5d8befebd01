"""The pure parts of head-office sync: the [mqtt] configuration, signed manifests and commands,
message payloads, the collector's store (deduplication and the high-water mark)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.errors import ConfigError
from gateway.journal import Event
from gateway.sync.config import SyncConfig, parse_sync_config
from gateway.sync.hq import EventStore
from gateway.sync.messages import (
    MessageError,
    chunk_events,
    decode_ack,
    decode_events,
    encode_ack,
    encode_events,
)
from gateway.sync.signed import (
    SignedError,
    make_command,
    make_manifest,
    open_command,
    open_manifest,
    payload_type,
    pin,
    sign_document,
)

STATE = Path("/var/lib/portvakt")
MINIMAL = {"host": "mqtt.example.se", "ca_file": "mqtt-ca.pem", "username": "sto-hq/gw-1",
           "password_file": "/run/credentials/portvakt.service/mqtt-password"}


def parse(**changes: Any) -> SyncConfig:
    raw = {**MINIMAL, **changes}
    return parse_sync_config({k: v for k, v in raw.items() if v is not None}, "portvakt.toml",
                             lambda p: Path(p) if Path(p).is_absolute() else STATE / p)


class TestConfig:
    def test_a_minimal_table_gets_the_documented_defaults(self) -> None:
        c = parse()
        assert (c.host, c.port, c.ca_file) == ("mqtt.example.se", 8883, STATE / "mqtt-ca.pem")
        assert c.password_file == Path("/run/credentials/portvakt.service/mqtt-password")
        assert (c.protocol, c.topic_prefix, c.inline_limit) == (5, "portvakt", 256 * 1024)
        assert c.event_retention == 14 * 86400
        assert (c.window, c.batch, c.backlog_alarm) == (5000, 1000, 100_000)
        assert (c.events_per_message, c.message_bytes) == (50, 64 * 1024)
        assert c.crl.urls == () and c.source == "portvakt.toml"

    def test_every_setting_is_read(self) -> None:
        c = parse(port=1883, protocol="3.1.1", topic_prefix="acme/pv", inline_limit_bytes=65536,
                  event_retention_days=2, backlog_alarm_events=5000, window=200, batch=50,
                  command_keys=["keys/cmd.pub"], manifest_keys=["/etc/portvakt/m.pub"],
                  client_cert="gw.crt", client_key="gw.key",
                  crl={"urls": ["http://pki.example.se/issuing.crl"], "lead_seconds": 7200})
        assert (c.port, c.protocol, c.topic_prefix, c.inline_limit) == (1883, 4, "acme/pv", 65536)
        assert (c.event_retention, c.backlog_alarm, c.window, c.batch) == (2 * 86400, 5000, 200, 50)
        assert c.command_keys == (STATE / "keys/cmd.pub",)
        assert c.manifest_keys == (Path("/etc/portvakt/m.pub"),)
        assert (c.client_cert, c.client_key) == (STATE / "gw.crt", STATE / "gw.key")
        assert c.crl.urls == ("http://pki.example.se/issuing.crl",) and c.crl.lead == 7200

    @pytest.mark.parametrize(("changes", "key", "expected"), [
        ({"host": None}, "mqtt.host", "missing"),
        ({"ca_file": None}, "mqtt.ca_file", "TLS is required"),
        ({"password": "hunter2"}, "mqtt.password", "put the password in a file"),
        ({"password_file": None}, "mqtt.password_file", "never the password itself"),
        ({"username": None}, "mqtt.username", "password_file belongs to"),
        ({"client_cert": "a.crt"}, "mqtt.client_key", "both client_cert and client_key"),
        ({"protocol": "4"}, "mqtt.protocol", "expected one of 5, 3.1.1"),
        ({"topic_prefix": "pv/#"}, "mqtt.topic_prefix", "without +, #"),
        ({"port": 0}, "mqtt.port", "1..65535"),
        ({"batch": 500, "window": 100}, "mqtt.batch", "at most window"),
        ({"brokers": []}, "mqtt.brokers", "unknown key"),
        ({"crl": {"urls": ["ldap://x"]}}, "mqtt.crl.urls[0]", "http:// or https://"),
        ({"inline_limit_bytes": "256k"}, "mqtt.inline_limit_bytes", "an integer"),
    ])
    def test_a_bad_setting_names_file_key_and_expected_form(self, changes: dict[str, Any],
                                                             key: str, expected: str) -> None:
        with pytest.raises(ConfigError) as info:
            parse(**changes)
        assert (info.value.file, info.value.key) == ("portvakt.toml", key)
        assert expected in info.value.expected

    def test_client_certificates_alone_are_enough(self) -> None:
        c = parse(username=None, password_file=None, client_cert="gw.crt", client_key="gw.key")
        assert c.username is None and c.client_key == STATE / "gw.key"


KEY = ed25519.Ed25519PrivateKey.generate()
OTHER = ed25519.Ed25519PrivateKey.generate()
PINNED = pin([KEY.public_key()])
NOW = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
SHA = hashlib.sha256(b"content").hexdigest()


class TestManifests:
    def manifest(self, **changes: Any) -> bytes:
        doc = make_manifest("policy", "sto-hq", "https://hq.example.se/p.json", SHA, 7, NOW)
        return sign_document({**doc, **changes}, KEY)

    def test_a_manifest_opens_with_its_fields(self) -> None:
        m = open_manifest(self.manifest(), PINNED, kind="policy", scope="sto-hq", max_size=100)
        assert (m.kind, m.scope, m.url, m.sha256, m.size) == (
            "policy", "sto-hq", "https://hq.example.se/p.json", SHA, 7)
        assert payload_type(self.manifest()) == "portvakt.manifest"

    @pytest.mark.parametrize(("changes", "kw", "reason"), [
        ({}, {"kind": "crl"}, "wrong-kind"),
        ({}, {"scope": "gbg-lab"}, "wrong-scope"),
        ({"url": "http://hq.example.se/p.json"}, {}, "bad-url"),
        ({"size": 10**9}, {}, "too-large"),
        ({"sha256": "ABC"}, {}, "schema"),
        ({"extra": 1}, {}, "schema"),
        ({"type": "portvakt.command"}, {}, "wrong-type"),
    ])
    def test_a_manifest_that_must_not_be_used_is_refused(self, changes: dict[str, Any],
                                                         kw: dict[str, Any], reason: str) -> None:
        args: dict[str, Any] = {"kind": "policy", "scope": "sto-hq", "max_size": 100, **kw}
        with pytest.raises(SignedError) as info:
            open_manifest(self.manifest(**changes), PINNED, **args)
        assert info.value.reason == reason

    def test_http_is_accepted_only_when_allowed(self) -> None:
        data = self.manifest(url="http://hq.example.se/p.json")
        m = open_manifest(data, PINNED, kind="policy", scope="sto-hq", max_size=100,
                          allow_http=True)
        assert m.url.startswith("http://")

    def test_a_manifest_signed_by_another_key_is_unknown(self) -> None:
        doc = make_manifest("crl", "ab", "https://x/y", SHA, 7, NOW)
        with pytest.raises(SignedError) as info:
            open_manifest(sign_document(doc, OTHER), PINNED, kind="crl", scope=None, max_size=9)
        assert info.value.reason == "unknown-key"


class TestCommands:
    def open(self, data: bytes, now: datetime = NOW + timedelta(seconds=5)) -> Any:
        return open_command(data, PINNED, site="sto-hq", gateway="gw-1", now=now.timestamp(),
                            max_ttl=600, clock_skew=60)

    def test_a_command_opens_with_its_fields(self) -> None:
        doc = make_command("door.unlock", {"door": "main", "seconds": 4}, site="sto-hq",
                           gateway="gw-1", ttl=30, now=NOW, nonce="n" * 24)
        c = self.open(sign_document(doc, KEY))
        assert (c.action, dict(c.args), c.nonce) == ("door.unlock", {"door": "main", "seconds": 4},
                                                     "n" * 24)
        assert c.expires_at - c.issued_at == 30

    @pytest.mark.parametrize(("action", "args", "match"), [
        ("door.open", {}, "expected one of"),
        ("door.unlock", {}, "args.door"),
        ("door.unlock", {"door": "main", "seconds": 0}, "0 < seconds"),
        ("site.lockdown", {"door": "main"}, "args.door: unknown"),
    ])
    def test_bad_actions_and_arguments_are_refused_when_made(self, action: str,
                                                             args: dict[str, Any],
                                                             match: str) -> None:
        with pytest.raises(SignedError, match=match):
            make_command(action, args, site="sto-hq", gateway="gw-1")

    def test_a_command_from_the_future_is_not_yet_valid(self) -> None:
        doc = make_command("site.normal", site="sto-hq", gateway="gw-1", now=NOW + timedelta(hours=1))
        with pytest.raises(SignedError) as info:
            self.open(sign_document(doc, KEY))
        assert info.value.reason == "not-yet-valid"

    def test_a_command_for_another_site_is_refused(self) -> None:
        doc = make_command("site.normal", site="gbg-lab", gateway="gw-1", now=NOW)
        with pytest.raises(SignedError) as info:
            self.open(sign_document(doc, KEY))
        assert info.value.reason == "wrong-site"


class TestMessages:
    def test_events_round_trip_with_the_acknowledged_floor(self) -> None:
        evs = [Event(7, "gw-1", 1.5, "access.granted", "main", "p1", "granted", {"ms": 3}),
               Event(8, "gw-1", 2.0, "access.denied", "main", None, "unknown-card")]
        m = decode_events(encode_events(evs, "sto-hq", 4), "sto-hq", "gw-1")
        assert [(e.seq, e.at, e.kind, e.acked) for e in m] == [(7, 1.5, "access.granted", 4),
                                                               (8, 2.0, "access.denied", 4)]
        assert m[0].body["data"] == {"ms": 3} and m[0].body["person"] == "p1"
        assert m[1].body["gateway"] == "gw-1"

    def test_events_must_match_their_topic(self) -> None:
        ev = Event(1, "gw-2", 1.0, "x")
        with pytest.raises(MessageError, match="do not match the topic"):
            decode_events(encode_events([ev], "sto-hq", 0), "sto-hq", "gw-1")

    def test_one_bad_event_refuses_the_whole_message(self) -> None:
        doc = json.loads(encode_events([Event(1, "gw-1", 1.0, "x"), Event(2, "gw-1", 1.0, "y")],
                                       "sto-hq", 0))
        doc["events"][1]["seq"] = "2"
        with pytest.raises(MessageError, match=r"events\.events\[1\]\.seq"):
            decode_events(json.dumps(doc).encode(), "sto-hq", "gw-1")

    def test_events_are_chunked_by_count_and_size(self) -> None:
        evs = [Event(i, "gw-1", 1.0, "k", data={"pad": "x" * 300}) for i in range(1, 11)]
        by_count = chunk_events(evs, "s", 0, per_message=4, max_bytes=1 << 20)
        assert [last for last, _ in by_count] == [4, 8, 10]
        by_size = chunk_events(evs, "s", 0, per_message=10, max_bytes=1000)
        assert all(len(p) <= 1000 for _, p in by_size)
        assert [e.seq for _, p in by_size for e in decode_events(p, "s", "gw-1")] == \
            list(range(1, 11))

    @pytest.mark.parametrize("payload", [b"", b"7", b'{"seq": -1}', b'{"seq": true}',
                                         b'{"seq": 1, "x": 2}', b"\xff"])
    def test_a_bad_ack_is_refused(self, payload: bytes) -> None:
        with pytest.raises(MessageError):
            decode_ack(payload)

    def test_an_ack_round_trips(self) -> None:
        assert decode_ack(encode_ack(12)) == 12


class TestEventStore:
    def row(self, seq: int, floor: int = 0, gw: str = "gw-1") -> tuple[str, str, int, float, str,
                                                                        int, str]:
        return ("sto-hq", gw, seq, 1.0, "k", floor, json.dumps({"seq": seq}))

    def test_duplicates_are_dropped_and_the_mark_stops_at_the_first_gap(self, tmp_path: Path
                                                                        ) -> None:
        s = EventStore(tmp_path / "hq.db")
        try:
            new, raised = s.store([self.row(1), self.row(2), self.row(4)], 0)
            assert (new, raised) == (3, {("sto-hq", "gw-1"): 2})
            new, raised = s.store([self.row(2), self.row(4)], 0)
            assert (new, raised) == (0, {})
            new, raised = s.store([self.row(3)], 0)
            assert (new, raised) == (1, {("sto-hq", "gw-1"): 4})
            assert s.seqs("sto-hq", "gw-1") == [1, 2, 3, 4]
        finally:
            s.close()

    def test_a_gateway_seen_first_after_a_purge_starts_at_its_floor(self, tmp_path: Path) -> None:
        s = EventStore(tmp_path / "hq.db")
        try:
            _, raised = s.store([self.row(101, floor=100), self.row(102, floor=100)], 0)
            assert raised == {("sto-hq", "gw-1"): 102}
        finally:
            s.close()
        again = EventStore(tmp_path / "hq.db")  # the marks are kept
        try:
            assert again.acked == {("sto-hq", "gw-1"): 102}
        finally:
            again.close()


class TestCrlSchedule:
    def fetcher(self, **cfg: Any) -> Any:
        from gateway.sync.config import CrlFetchConfig
        from gateway.sync.crl import CrlFetcher

        return CrlFetcher(CrlFetchConfig(urls=("http://x/c.crl",), **cfg), None,  # type: ignore[arg-type]
                          None, None)  # type: ignore[arg-type]

    def test_next_fetch_is_before_next_update_or_at_the_refresh_whichever_first(self) -> None:
        f = self.fetcher(lead=3600, refresh=6 * 3600, retry=60)
        p = f.points[0]
        p.next_update = 100_000.0
        assert f._next_due(p, 90_000.0) == 100_000.0 - 3600  # lead before nextUpdate
        assert f._next_due(p, 10_000.0) == 10_000.0 + 6 * 3600  # the refresh comes first
        # Inside the lead window (the CA has not published the next one yet): soon again.
        assert f._next_due(p, 97_000.0) == 97_000.0 + 60
        p.next_update = None
        assert f._next_due(p, 0.0) == 6 * 3600
