"""Word expansion, faithful to BuildKit's shell lexer (``frontend/dockerfile/shell/lex.go``).

CONTRACT: ``Lexer(escape).process_word(word, env)`` and ``process_words``; errors are
``DockerfileError`` without a location (the caller adds it).
"""

from __future__ import annotations
