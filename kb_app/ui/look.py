"""How the page looks and which language it speaks: the header's switches, the narrow-screen layout, and the
script that makes a chosen language and theme stick.

Gradio picks its interface language from the browser when the page starts and its theme from the system (or
``?__theme=``); neither choice is kept. The header's switches keep the visitor's choice in ``localStorage``:
:data:`HEAD`, put first in the page's ``<head>`` by :class:`kb_app.server.PageHead`, answers ``navigator.language``
with it before Gradio starts; :data:`ON_LOAD` applies the kept theme once the page is up. Nothing here loads
anything from another origin.
"""

from __future__ import annotations

HEAD = """<script>
(() => {
  const lang = { zh: "zh-CN", en: "en" }[localStorage.getItem("kb-lang")];  // Gradio offers zh-CN: kb's "zh" words
  if (lang) {
    Object.defineProperty(Navigator.prototype, "language", { get: () => lang });
    Object.defineProperty(Navigator.prototype, "languages", { get: () => [lang] });
  }
})();
</script>"""

ON_LOAD = """() => {
  const theme = localStorage.getItem("kb-theme");
  if (theme === "dark") document.body.classList.add("dark");
  if (theme === "light") document.body.classList.remove("dark");
}"""

SWITCH_LANGUAGE = """() => {
  const now = (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
  localStorage.setItem("kb-lang", now === "zh" ? "en" : "zh");
  location.reload();
}"""


def on_load(*scripts: str) -> str:
    """One page-load script (Gradio runs a single ``js`` function) calling :data:`ON_LOAD` and each of ``scripts``,
    themselves functions without arguments."""
    calls = "".join(f"({script})();\n" for script in (ON_LOAD, *scripts))
    return "() => {\n" + calls + "}"


SWITCH_THEME = """() => {
  const dark = document.body.classList.toggle("dark");
  localStorage.setItem("kb-theme", dark ? "dark" : "light");
}"""

CSS = """
#header { align-items: center; }
#header .switch { max-width: 8em; }
.kb-hidden { display: none !important; }
@media (max-width: 640px) {
  .gradio-container { padding: 4px !important; }
  #header { flex-wrap: wrap; }
  .kb-row { flex-direction: column !important; }
  .kb-row > * { min-width: 100% !important; }
  .kb-sidebar { order: 2; }  /* on a phone the chat comes first, the conversations under it */
  .tab-container button { padding: 4px 6px !important; font-size: 0.85em !important; }
}
"""
