"""Generation jobs (CONTRACT.md section 7): the step-level scheduler, the job stores and the job service."""
