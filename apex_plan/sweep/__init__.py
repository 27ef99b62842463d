"""`apex-plan sweep`: many searches from one scenario file, resumable, on a process pool or Ray."""
