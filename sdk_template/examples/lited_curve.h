/* CURVE keys for a tcp:// endpoint (docs/protocol.md, "Over TCP"): what the
 * C examples set on their socket before they connect. The keys come from the
 * files `lited keygen` writes (zmq.auth's format), named by two variables:
 * LITED_SERVER_KEY, the daemon's public key file (NAME.key), and
 * LITED_CLIENT_KEY, this app's secret key file (APP.key_secret, whose public
 * half is in the daemon's clients_dir). */
#ifndef LITED_CURVE_H
#define LITED_CURVE_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#define Z85_KEY_CHARS 40 /* a 32-byte key in Z85 */

/* The quoted Z85 value of `field` (public-key or secret-key) in key file
 * `path`, into `out`; 0, or -1 with why not written into `why`. */
static inline int curve_read_key(const char *path, const char *field, char out[Z85_KEY_CHARS + 1],
                                 char *why, size_t size)
{
    char line[512];
    size_t n = strlen(field);
    FILE *f = fopen(path, "r");

    if (!f) {
        snprintf(why, size, "%s: %s", path, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        char *p = line + strspn(line, " \t"), *end;

        if (strncmp(p, field, n) != 0)
            continue;
        p += n;
        p += strspn(p, " \t");
        if (*p++ != '=')
            continue;
        p += strspn(p, " \t");
        end = *p == '"' ? strchr(p + 1, '"') : NULL;
        if (!end || end - (p + 1) != Z85_KEY_CHARS)
            break;
        memcpy(out, p + 1, Z85_KEY_CHARS);
        out[Z85_KEY_CHARS] = '\0';
        fclose(f);
        return 0;
    }
    fclose(f);
    snprintf(why, size, "%s: no %s of %d characters in quotes (not a key file of lited keygen?)",
             path, field, Z85_KEY_CHARS);
    return -1;
}

/* NULL when `sock` got its keys from the two variables, or neither is set
 * (an ipc:// endpoint, or a tcp:// one of a daemon run with insecure_tcp);
 * else why not, written into `why`. */
static inline const char *curve_from_env(void *sock, char *why, size_t size)
{
    const char *server = getenv("LITED_SERVER_KEY"), *client = getenv("LITED_CLIENT_KEY");
    char server_public[Z85_KEY_CHARS + 1], public_key[Z85_KEY_CHARS + 1], secret_key[Z85_KEY_CHARS + 1];

    if (!server && !client)
        return NULL;
    if (!server || !client) {
        snprintf(why, size, "CURVE needs both LITED_SERVER_KEY (the daemon's NAME.key) and "
                            "LITED_CLIENT_KEY (this app's APP.key_secret); only %s is set",
                 server ? "LITED_SERVER_KEY" : "LITED_CLIENT_KEY");
        return why;
    }
    if (!zmq_has("curve")) {
        snprintf(why, size, "this libzmq was built without CURVE: it cannot use LITED_SERVER_KEY");
        return why;
    }
    if (curve_read_key(server, "public-key", server_public, why, size) != 0 ||
        curve_read_key(client, "public-key", public_key, why, size) != 0 ||
        curve_read_key(client, "secret-key", secret_key, why, size) != 0)
        return why;
    /* a Z85 key is given as its 40 characters and the terminating NUL */
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server_public, sizeof server_public) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, public_key, sizeof public_key) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, secret_key, sizeof secret_key) != 0) {
        snprintf(why, size, "%s or %s: a key that is not Z85 (%s)", server, client, zmq_strerror(zmq_errno()));
        return why;
    }
    return NULL;
}

#endif
