#!/bin/sh
# Add ZLoRA Desktop (this unpacked folder) to your desktop's application menu, and `zlora` to
# ~/.local/bin. Nothing is copied: keep the folder where it is (run this again after moving it).
#   ./install.sh             install for the current user
#   ./install.sh --uninstall remove the menu entry, icon and the zlora link
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${XDG_DATA_HOME:-$HOME/.local/share}
APPS="$DATA/applications"
ICONS="$DATA/icons/hicolor/256x256/apps"
BIN="$HOME/.local/bin"

if [ "${1:-}" = "--uninstall" ]; then
    rm -f "$APPS/zlora-desktop.desktop" "$ICONS/zlora-desktop.png"
    if [ -L "$BIN/zlora" ]; then rm -f "$BIN/zlora"; fi
    command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database "$APPS" >/dev/null 2>&1 || true
    echo "ZLoRA Desktop removed from the menu (the folder $HERE is left as it is)."
    exit 0
fi

mkdir -p "$APPS" "$ICONS" "$BIN"
cp "$HERE/zlora-desktop.png" "$ICONS/zlora-desktop.png"
# The .desktop file's Exec and Icon point to this folder (quoted: the path may hold spaces).
sed -e "s|^Exec=.*|Exec=\"$HERE/ZLoRA-Desktop\" %F|" -e "s|^Icon=.*|Icon=$ICONS/zlora-desktop.png|" \
    "$HERE/zlora-desktop.desktop" > "$APPS/zlora-desktop.desktop"
chmod 644 "$APPS/zlora-desktop.desktop"
ln -sf "$HERE/zlora" "$BIN/zlora"
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database "$APPS" >/dev/null 2>&1 || true
command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q "$DATA/icons/hicolor" >/dev/null 2>&1 || true
echo "ZLoRA Desktop is in your application menu; 'zlora' is in $BIN."
case ":$PATH:" in *":$BIN:"*) ;; *) echo "(add $BIN to your PATH to run zlora from any terminal)";; esac
