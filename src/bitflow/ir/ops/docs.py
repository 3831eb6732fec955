"""``python -m bitflow.ir.ops.docs > docs/ops.md``: print the generated op table page."""

from . import docs_page

if __name__ == "__main__":
    print(docs_page(), end="")
