"""The page's words in English and Chinese (``gr.I18n``): the browser's language picks them, the header's switch
changes it (:mod:`kb_app.ui.look`). Each screen names its words by key with :func:`t`; a key with no entry is a
bug the tests catch (``tests/test_ui_look.py`` checks every key used is here).

Messages a handler builds at run time (statuses, errors) stay bilingual in one string: they are made on the
server, which does not know the visitor's language.
"""

from __future__ import annotations

import gradio as gr
from gradio.i18n import I18nData

TEXT: dict[str, tuple[str, str]] = {
    "app.title": ("## kb · private knowledge base", "## kb · 私有知识库问答"),
    "app.tagline": (
        "Answers come only from your documents, on this machine.",
        "回答仅来自你上传的文档，全部在本机运行。",
    ),
    "app.language": ("中文", "English"),
    "app.theme": ("🌓 Dark / light", "🌓 深色 / 浅色"),
    "tab.chat": ("Chat", "问答"),
    "chat.new_conversation": ("New conversation", "新对话"),
    "chat.conversations": ("Conversations", "对话"),
    "chat.title": ("Title", "标题"),
    "chat.rename": ("Rename", "重命名"),
    "chat.delete": ("Delete", "删除"),
    "chat.delete_for_good": ("Delete for good", "确认删除"),
    "chat.keep_it": ("Keep it", "取消"),
    "chat.knowledge_bases_one_or_several": ("Knowledge bases (one or several)", "知识库（可多选）"),
    "chat.ask_in_chinese_or_english": ("Ask in Chinese or English…", "用中文或英文提问…"),
    "chat.ask": ("Ask", "提问"),
    "chat.stop": ("Stop", "停止"),
    "chat.regenerate": ("Regenerate", "重答"),
    "chat.what_was_wrong_or_right_about_th": (
        "What was wrong or right about the answer you rated?",
        "对刚评价的回答有何意见？",
    ),
    "chat.send_comment": ("Send comment", "提交意见"),
    "tab.documents": ("Documents", "文档"),
    "documents.drop_files": ("Drop files", "拖放文件"),
    "documents.files": ("Files", "文件"),
    "documents.knowledge_base": (
        "Knowledge base (type a new name in any language to create one, e.g. 财务部)",
        "知识库（输入任意语言的新名称即可创建，例如 财务部）",
    ),
    "documents.new_knowledge_base": ("New knowledge base", "新建知识库"),
    "documents.create": ("Create", "创建"),
    "documents.rename_to": ("Rename to", "重命名为"),
    "documents.rename": ("Rename", "重命名"),
    "documents.delete_this_knowledge_base": ("Delete this knowledge base", "删除知识库"),
    "documents.delete_file": ("Delete file", "删除文件"),
    "documents.re_index": ("Re-index", "重新索引"),
    "documents.cancel_queued": ("Cancel queued", "取消排队"),
    "tab.search": ("Search", "检索"),
    "search.knowledge_bases_one_or_several": ("Knowledge bases (one or several)", "知识库（可多选）"),
    "search.search_passages_without_the_mode": ("Search passages, without the model…", "检索段落（不经模型）…"),
    "search.passages": ("Passages", "段落数"),
    "search.search": ("Search", "检索"),
    "search.chunks_of_a_document": ("### Chunks of a document", "### 文档的全部片段"),
    "search.document": ("Document", "文档"),
    "citation_panel.close": ("Close", "关闭"),
    "citation_panel.retrieved_not_cited": ("Retrieved, not cited", "检索到但未引用"),
    "tab.admin": ("Admin", "管理"),
    "admin.users": ("### Users", "### 用户"),
    "admin.user_name": ("User name", "用户名"),
    "admin.password": ("Password", "密码"),
    "admin.admin": ("Admin", "管理员"),
    "admin.add_user": ("Add user", "添加用户"),
    "admin.remove_user": ("Remove user", "删除用户"),
    "admin.grants": ("### Grants", "### 授权"),
    "admin.user": ("User", "用户"),
    "admin.knowledge_base": ("Knowledge base", "知识库"),
    "admin.role": ("Role", "角色"),
    "admin.grant": ("Grant", "授予"),
    "admin.revoke": ("Revoke", "撤销"),
}

I18N = gr.I18n(en={k: en for k, (en, _) in TEXT.items()}, zh={k: zh for k, (_, zh) in TEXT.items()})


def t(key: str) -> I18nData:
    """The words for ``key`` in the visitor's language; an unknown key fails when the page is built."""
    if key not in TEXT:
        raise KeyError(f"no interface text for {key!r}: add it to kb_app/ui/i18n.py TEXT")
    return I18N(key)
