/* runas UID GID PROG [ARGS...]
 * Run PROG as UID:GID with no supplementary groups and no capabilities left
 * (a plain user, without CAP_FSETID).  The guest's busybox has no applet
 * that switches to a uid missing from /etc/passwd. */
#define _GNU_SOURCE
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: runas UID GID PROG [ARGS...]\n");
        return 2;
    }
    uid_t uid = (uid_t)strtoul(argv[1], NULL, 10);
    gid_t gid = (gid_t)strtoul(argv[2], NULL, 10);
    if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) {
        perror("runas: switching user");
        return 126;
    }
    execvp(argv[3], argv + 3);
    perror("runas: exec");
    return 127;
}
