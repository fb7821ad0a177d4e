"""Quality: how good the results are, and pages that show them: evaluation on labelled sets,
HTML reports of results, and sweeps of a tenant's near-duplicate images."""
