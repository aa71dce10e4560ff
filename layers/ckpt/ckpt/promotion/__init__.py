"""The promotion: the code that runs the contract's rules against the store and the database (through the
interfaces in ``ports``), and what a job's promoted checkpoints are."""
