"""One module per lesson (l00, l01, ...): reference implementations, check cases and check functions.

A check function takes the learner's function and returns a `helpers.checks.CheckResult`; it never
raises. Tests in tests/test_exercises_lNN.py feed each check the reference and at least two
plausible wrong implementations.
"""
