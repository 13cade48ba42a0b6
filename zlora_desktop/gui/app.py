"""Entry point of ``zlora-desktop``: the window appears before torch is imported."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from PySide6.QtWidgets import QApplication, QLabel

    app = QApplication.instance() or QApplication(sys.argv if argv is None else ["zlora-desktop", *argv])
    label = QLabel("ZLoRA Desktop — the full window arrives with the GUI issue.\n"
                   "Use the zlora command meanwhile: zlora --help")
    label.setMargin(40)
    label.setWindowTitle("ZLoRA Desktop")
    label.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
