"""CalmFirst service: routing policy, playbook, HTTP API, batch scoring and CLI."""
