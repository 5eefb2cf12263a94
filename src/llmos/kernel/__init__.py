"""The kernel: jobs, resources, the scheduler, executors, the job context and the daemon.

It knows nothing about machine learning, and imports neither torch nor ray at run time.
"""
