"""Offline trust: path validation to anchors, cached CRLs, PKI-CAK proof, identity extraction."""
