"""The local Hub server: the Hub API subset huggingface_hub uses, served from a folder.

Used by the test suite (fixture `local_hub`) and by `pearl-bot demo`. The implementation lives
in the `pearl_bot.testing.hub` package; this module is its public face.
"""

from __future__ import annotations

from pearl_bot.testing.hub.objects import LocalHubError, git_blob_sha1, is_lfs_path
from pearl_bot.testing.hub.server import Fault, LocalHub, RecordedRequest

__all__ = ["Fault", "LocalHub", "LocalHubError", "RecordedRequest", "git_blob_sha1", "is_lfs_path"]
