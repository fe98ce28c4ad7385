"""The citation viewer's pure parts: a cited PDF page rendered with its passage marked (:mod:`.pdf_page`) and the
text around a passage (:mod:`.context`). The Assistant checks permission and fetches; these only compute."""
