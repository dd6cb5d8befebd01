"""Virtual credentials for the demo and tests: a PIV card on a vpcd reader, a phone over NFC."""
