/* fcntl-lock FILE r|w|u START LEN [HOLD_SECONDS]
 * Take (or release) a POSIX record lock with F_SETLK, never waiting.
 * Prints "locked" and holds it for HOLD_SECONDS; exits 1 if the lock is
 * held by someone else.  busybox has no tool for fcntl locks. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: fcntl-lock FILE r|w|u START LEN [HOLD]\n");
        return 2;
    }
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) {
        perror("open");
        return 2;
    }
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = argv[2][0] == 'w' ? F_WRLCK : argv[2][0] == 'r' ? F_RDLCK : F_UNLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = atoll(argv[3]);
    fl.l_len = atoll(argv[4]);
    if (fcntl(fd, F_SETLK, &fl) < 0) {
        printf("busy: %s\n", strerror(errno));
        return 1;
    }
    printf("locked\n");
    fflush(stdout);
    if (argc > 5)
        sleep(atoi(argv[5]));
    return 0;
}
