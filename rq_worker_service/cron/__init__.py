"""Periodic jobs (rq's cron, as a service): the schedule, its slots, the lease, and the scheduler's loop."""
