"""Shared plumbing of every stage: errors, artifacts (atomic write, sidecar, store), config, environment."""
