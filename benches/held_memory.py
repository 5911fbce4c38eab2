"""What a process holds in memory, as the memory benches count it (issue 17, target 6).

- VmRSS: anonymous and file pages mapped and touched, mapped memory files included;
- RssShmem: the shmem part of that (touched mappings of memory files);
- the memory files (`memfd:`) the process holds by a descriptor or a mapping alone (a body
  evicted or declined while a client is still being sent slices of it): shmem pages that
  belong to no RSS unless a mapping of them was touched, counted once per file, by the
  pages they hold rather than their length (a body being written is sized up front).

`python3 held_memory.py PID` prints "VmRSS RssShmem memory-files" in bytes every 0.2 s
until the process is gone or the sampler is stopped.
"""
import os
import sys
import time


def held(pid):
    """(VmRSS, RssShmem, memory files) of `pid`, in bytes."""
    status = dict(
        line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line
    )
    kb = lambda key: int(status.get(key, "0 kB").split()[0]) * 1024
    files = {}
    links = [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
    links += [f"/proc/{pid}/map_files/{m}" for m in os.listdir(f"/proc/{pid}/map_files")]
    for link in links:
        try:
            if os.readlink(link).startswith("/memfd:"):
                st = os.stat(link)
                files[st.st_ino] = st.st_blocks * 512
        except OSError:
            pass
    return kb("VmRSS"), kb("RssShmem"), sum(files.values())


if __name__ == "__main__":
    while True:
        try:
            print(*held(sys.argv[1]), flush=True)
        except OSError:
            break
        time.sleep(0.2)
