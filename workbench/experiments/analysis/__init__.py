"""What a grid found: aggregated records, the paired tests, contrasts, findings and figures."""
