#!/usr/bin/env bash
# `make path`: put this checkout's `carbonwatch` where the user's PATH already looks.
# The first of ~/.local/bin, ~/bin, /usr/local/bin that is on PATH and writable gets a link (root's PATH on
# Debian has /usr/local/bin but not ~/.local/bin); with none of them, the link goes to ~/.local/bin and the
# exact path to run is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
target="$PWD/.venv/bin/carbonwatch"
on_path() { case ":$PATH:" in *":$1:"*) return 0;; *) return 1;; esac; }
for dir in "$HOME/.local/bin" "$HOME/bin" /usr/local/bin; do
  if on_path "$dir" && { [ -d "$dir" ] || mkdir -p "$dir" 2>/dev/null; } && [ -w "$dir" ]; then
    ln -sfn "$target" "$dir/carbonwatch"
    if [ "$(command -v carbonwatch)" = "$dir/carbonwatch" ]; then
      echo "path: carbonwatch is on PATH ($dir/carbonwatch -> $target)"
    else
      echo "path: linked $dir/carbonwatch, but $(command -v carbonwatch) comes first on PATH; run $target"
    fi
    exit 0
  fi
done
mkdir -p "$HOME/.local/bin" && ln -sfn "$target" "$HOME/.local/bin/carbonwatch"
echo "path: no directory on PATH is writable; linked $HOME/.local/bin/carbonwatch. Run $target, or add it with:"
echo "  export PATH=\"\$HOME/.local/bin:\$PATH\""
