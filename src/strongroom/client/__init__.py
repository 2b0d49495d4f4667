"""Host side: talk to a running enclave (files, runs, attestation)."""
