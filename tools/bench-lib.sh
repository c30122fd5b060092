# Helpers shared by the benchmark scripts in tools/ (sourced, not run).

# A base port with one free port per shard after it (shard i listens on
# base + i): free_port SHARDS.
free_port() {
    python3 - "$1" <<'EOF'
import random, socket, sys
count = int(sys.argv[1])
for _ in range(200):
    base = random.randrange(20000, 32000)
    sockets = []
    try:
        for port in range(base, base + count):
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            sockets.append(s)
    except OSError:
        continue
    finally:
        for s in sockets:
            s.close()
    print(base)
    sys.exit(0)
sys.exit("no free ports")
EOF
}
