"""Entry script of the frozen app; what it runs depends on the name it was started as.

``ZLoRA-Desktop`` (windowed on Windows and macOS: no stdout, no stderr):
  * ``--self-test`` runs the headless self-test (zlora_desktop.selftest) and exits with its
    status, before Qt or the GUI is imported;
  * otherwise the GUI starts (``zlora_desktop.gui.app.main``). Everything is logged to the user
    log folder; an error that escapes the GUI is logged and shown in a dialog that says where
    the log is (Qt's message box, or the system's when Qt itself is what failed).

``zlora`` (a console executable on Windows and macOS; on Linux a symlink to ZLoRA-Desktop,
which saves a second copy of the Python archive): the command line.
``zlora self-test`` runs the same self-test, printing to the console.
"""

import os
import sys


def _program_names() -> set:
    names = set()
    for path in (sys.argv[0] if sys.argv else "", sys.executable or ""):
        names.add(os.path.splitext(os.path.basename(path))[0].lower())
    return names


def _crash_dialog(message, log_path):
    try:
        from PySide6.QtCore import Qt
        from PySide6.QtWidgets import QApplication, QMessageBox

        _app = QApplication.instance() or QApplication(sys.argv[:1])  # noqa: F841 - alive while the box shows
        box = QMessageBox(QMessageBox.Icon.Critical, "ZLoRA Desktop", message)
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box.exec()
    except Exception:
        from zlora_desktop.applog import native_error_dialog

        native_error_dialog("ZLoRA Desktop", message)


def run_cli(argv) -> int:
    if argv[:1] == ["--self-test"]:  # as the app takes it; `zlora self-test` is the CLI's own
        argv = ["self-test"] + argv[1:]
    from zlora_desktop.cli import main

    return main(argv)


def run_gui(argv) -> int:
    if "--self-test" in argv:
        argv.remove("--self-test")
        from zlora_desktop.selftest import main as self_test

        return self_test(argv)
    import logging

    from zlora_desktop import __version__, applog

    log_path = applog.setup_logging()
    applog.install_excepthook(_crash_dialog)
    logging.getLogger("zlora_desktop").info("ZLoRA Desktop %s starting (frozen: %s), log %s", __version__,
                                            bool(getattr(sys, "frozen", False)), log_path)
    try:
        from zlora_desktop.gui.app import main

        return main(argv) or 0
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the last line of defence of a windowed app
        applog.log_exception(exc, "the app stopped on an unexpected error")
        _crash_dialog(applog.crash_message(exc), log_path)
        return 1


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(run_cli(args) if "zlora" in _program_names() else run_gui(args))
