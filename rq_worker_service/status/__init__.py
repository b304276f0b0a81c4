"""``rq-worker-service status``: is it healthy, and if not, what is stuck.

One collection of figures (``collect``) is judged (``judge``: a Nagios-style verdict, 0 OK,
1 WARNING, 2 CRITICAL; 3 UNKNOWN when Redis cannot be asked) and rendered (``render``: a table for
people, JSON for scripts, Prometheus text for monitoring). ``report`` holds the figures all three
share. Each is imported on its own: the command imports rq only once RQ_KEY_PREFIX is settled.
"""
