# ninep e2e workload helpers, sourced before every workload (busybox ash).
#
# Workloads run under `set -e`, but an unchecked failing command only says
# "exit status N". Prefer the helpers below, which name the failed check:
#   cmd || fail "what went wrong"
#   check "desc" cmd args...              cmd must succeed
#   check_fails "desc" cmd args...        cmd must fail
#   check_eq "desc" "$actual" "expected"
#   check_fails_with "desc" "errtext" cmd args...   fails and stderr has errtext
# fail exits the current (sub)shell; call it outside $(...).

fail() {
    echo "E2E-CHECK-FAILED: $*" >&2
    exit 1
}

check() {
    _desc=$1
    shift
    "$@" || fail "$_desc: command failed (status $?): $*"
}

check_fails() {
    _desc=$1
    shift
    if "$@" >/dev/null 2>&1; then
        fail "$_desc: command unexpectedly succeeded: $*"
    fi
}

check_fails_with() {
    _desc=$1 _want=$2
    shift 2
    if _err=$("$@" 2>&1 >/dev/null); then
        fail "$_desc: command unexpectedly succeeded: $*"
    fi
    case "$_err" in
        *"$_want"*) ;;
        *) fail "$_desc: expected error containing '$_want', got '$_err'" ;;
    esac
}

check_eq() {
    [ "$2" = "$3" ] || fail "$1: expected '$3', got '$2'"
}

# Wall-clock time in nanoseconds. busybox date has no %N, so this uses
# coreutils date, which the image carries as /usr/bin/date. Note: the
# Debian busybox-static ash runs its own applets before searching PATH,
# so a non-busybox binary that shadows an applet must be called by its
# absolute path (/usr/bin/date, not date).
now_ns() {
    /usr/bin/date +%s%N
}

set -e
