"""Test components shipped with pearl-bot: a local Hub server and tiny-model builders.

They serve the test suite and the offline demo; nothing here is used by a production run.
"""
