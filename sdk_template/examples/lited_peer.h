/* Who serves an ipc:// endpoint (docs/protocol.md, "Endpoints"): what the C
 * examples check before they talk to it. */
#ifndef LITED_PEER_H
#define LITED_PEER_H

#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* NULL when the process listening on an ipc:// endpoint runs as a user this
 * client trusts (itself, root or the service user lited), else why not, written
 * into `why`. libzmq shows a client nothing of its peer, so this asks the
 * kernel (SO_PEERCRED) over a plain connection of its own, closed at once; the
 * ZeroMQ connection that follows goes to the same socket as long as nobody can
 * replace it, which the daemon's runtime directory (writable by its user
 * only) ensures. Other transports: NULL (tcp:// is CURVE's business). */
static inline const char *untrusted_peer(const char *endpoint, char *why, size_t size)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    struct ucred cred;
    socklen_t len = sizeof cred;
    const char *path = endpoint + strlen("ipc://");
    int fd, ok;

    if (strncmp(endpoint, "ipc://", strlen("ipc://")) != 0)
        return NULL;
    if (strlen(path) >= sizeof addr.sun_path) {
        snprintf(why, size, "%s: path too long for a unix socket", path);
        return why;
    }
    strcpy(addr.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    ok = fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0;
    if (!ok) {
        snprintf(why, size, "nothing listens on %s (%s): is lited serve running?", path, strerror(errno));
    } else if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        ok = 0;
        snprintf(why, size, "%s: SO_PEERCRED: %s", path, strerror(errno));
    }
    if (fd >= 0)
        close(fd);
    if (!ok)
        return why;
    struct passwd *service = getpwnam("lited");
    if (cred.uid == getuid() || cred.uid == 0 || (service && cred.uid == service->pw_uid))
        return NULL;
    snprintf(why, size, "%s is served by uid %u, not by this user, root or lited: refusing to talk to it", path,
             (unsigned)cred.uid);
    return why;
}

#endif
