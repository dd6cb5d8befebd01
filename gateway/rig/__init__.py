"""The real-service rig: pcscd + vpcd, a Modbus relay board, mosquitto, cupsd + ippeveprinter.

Each component starts on loopback, on a free port, in a folder of its own, is waited for (no fixed
sleeps) and is stopped by PID. The test fixtures and `portvakt demo` both use it; nothing here is
used by the daemon in production.
"""
