"""Networks (SER, TER, probes) and their shared training/evaluation core."""
