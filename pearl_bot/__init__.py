"""pearl-bot: keep a merged model on the Hugging Face Hub up to date.

It watches the upstream models of a merge recipe, reruns the merge when any upstream revision
moves, renders the model card, and pushes the new revision as one commit or pull request.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pearl-bot")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
