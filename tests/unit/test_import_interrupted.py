"""A Ctrl-C during ``import rx_discovery`` raises KeyboardInterrupt; it never kills the
interpreter. orjson's native init crashed (SIGSEGV) when an import it makes raised, as a
signal landing in that module's code does (seen: 1 run in 100 of a script interrupted at
start-up, ijl/orjson#310)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Emulates the signal deterministically: any module that orjson's init would load (run Python
# code for) raises KeyboardInterrupt, as a Ctrl-C landing there would.
SCRIPT = textwrap.dedent("""
    import sys

    def hook(event, args):
        if event != "import":
            return
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename.replace("\\\\", "/").endswith("orjson/__init__.py"):
                if args[0] != "orjson.orjson":  # the extension itself, not what it imports
                    raise KeyboardInterrupt(args[0])
            frame = frame.f_back

    sys.addaudithook(hook)
    try:
        import rx_discovery
    except KeyboardInterrupt as interrupted:
        print("interrupted", interrupted)
    else:
        print("imported")
""")


def test_a_ctrl_c_in_orjsons_init_imports_cannot_crash_the_import() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-1500:]}"
    assert done.stdout.strip() == "imported", done.stdout + done.stderr[-1500:]
