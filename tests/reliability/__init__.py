"""The reliability suite ("prove it survives"): crash matrix, fault storm, racing runners, database
faults, bad input, secrets. ``harness`` holds the machinery shared by these tests and by
``scripts/reliability``, which runs the same scenarios larger."""
