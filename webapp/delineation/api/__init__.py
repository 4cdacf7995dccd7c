"""REST API (mounted under /api/), one module per resource. Every scan and job is looked up through
``Scan.objects.visible_to`` / ``Job.objects.visible_to`` (the owner's, and those shared
with one of the user's teams), so another user's scan or job is simply not found (404),
never forbidden. A team member who sees a shared scan gets 403 with a message for what
only its owner does: queue a job (a propagation too), set its patient, save a propagation's
choices, share, unshare, delete. Patients are not shared: only their owner finds them."""
