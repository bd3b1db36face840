"""What the Hugging Face Hub accepts as a model id: one rule for model references and for `publish.model_id`."""

from __future__ import annotations

import re

_HUB_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
HUB_ID = re.compile(rf"(?!.*--)(?!.*\.\.)(?!.*\.git$){_HUB_PART}/{_HUB_PART}")
"""A Hub model id, as huggingface_hub's `validate_repo_id` accepts it (ASCII, each part 1-96 characters, no
`--`/`..`, no `.git` end), with the namespace required; match with `fullmatch`."""
