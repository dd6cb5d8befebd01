"""Head-office sync over MQTT (docs/mqtt.md): the gateway's SyncService and its [mqtt]
configuration; head office's collector and publishing tools live in gateway.sync.hq."""

from gateway.sync.config import CrlFetchConfig, SyncConfig, parse_sync_config
from gateway.sync.crl import crl_ingester
from gateway.sync.mqtt import BrokerError, PublishRefused, SyncError
from gateway.sync.service import SyncService
from gateway.sync.signed import VerifiedCommand

__all__ = ["BrokerError", "CrlFetchConfig", "PublishRefused", "SyncConfig", "SyncError",
           "SyncService", "VerifiedCommand", "crl_ingester", "parse_sync_config"]
