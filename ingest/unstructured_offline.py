"""Keeps unstructured off the network.

unstructured classifies text with spaCy's ``en_core_web_sm`` and, when that model is missing, downloads
it from GitHub on first use: offline this fails every docx/html/md/pptx/xlsx partition. kb only needs the
text of each element, so when the model is not installed we give unstructured a blank English pipeline
with a rule-based sentencizer (offline, built into spaCy). Element categories become coarser; the text
is the same.
"""

from __future__ import annotations

import os
from functools import cache


@cache
def use_offline_nlp() -> None:
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    import spacy
    from unstructured.nlp import tokenize

    try:
        spacy.load(tokenize._SPACY_MODEL_NAME)
        return
    except OSError:
        pass
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    tokenize._get_nlp = lambda: nlp
