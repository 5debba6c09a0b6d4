/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "field.h"
#include "redact.h"
#include "utf8.h"

#define LOWER "abcdefghijklmnopqrstuvwxyz"
#define UPPER "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#define DIGITS "0123456789"

#define MAX_PATH 4095U /* PATH_MAX - 1 */
#define MAX_URL 4096U
#define MAX_SSH_KEY 16384U

#define QUOTE_MAX FIELD_QUOTE_MAX
#define QUOTE_BUF_SIZE FIELD_QUOTE_SIZE

const char *field_quote(char buf[static FIELD_QUOTE_SIZE], const char *s) {
        size_t n = 0, i;

        for (i = 0; s[i] && i < QUOTE_MAX; i++) {
                unsigned char c = (unsigned char) s[i];

                if (c == '\n')
                        n += (size_t) sprintf(buf + n, "\\n");
                else if (c == '\t')
                        n += (size_t) sprintf(buf + n, "\\t");
                else if (c == '\r')
                        n += (size_t) sprintf(buf + n, "\\r");
                else if (c == '\\' || c == '\'')
                        n += (size_t) sprintf(buf + n, "\\%c", c);
                else if (c < 0x20 || c >= 0x7f)
                        n += (size_t) sprintf(buf + n, "\\x%02x", c);
                else
                        buf[n++] = (char) c;
        }
        if (s[i])
                n += (size_t) sprintf(buf + n, "...");
        buf[n] = '\0';
        return buf;
}

const char *field_quote_url(char buf[static FIELD_QUOTE_SIZE], const char *url) {
        _cleanup_free_ char *query = NULL, *shown = NULL;
        size_t base = strcspn(url, "?#"), end = base + strcspn(url + base, "#");

        /* The query redacted as everywhere else a URL is shown; a fragment kept as "#REDACTED", so that a message
         * about a character in it still makes sense. On ENOMEM only the part before the query is shown. */
        if (url[base] == '?') {
                _cleanup_free_ char *raw = strndup(url + base + 1, end - base - 1);
                query = raw ? url_redact_query(raw) : NULL;
        }
        if (asprintf(&shown, "%.*s%s%s%s", (int) base, url, query ? "?" : "", strempty(query),
                     url[end] == '#' && url[end + 1] ? "#" URL_REDACTED : "") < 0)
                return field_quote(buf, "(out of memory)");
        return field_quote(buf, shown);
}

const char *field_describe_char(char buf[static 16], char c) {
        unsigned char u = (unsigned char) c;

        if (u == '\n')
                return "a newline";
        if (u == ' ')
                return "a space";
        if (u > 0x20 && u < 0x7f)
                (void) snprintf(buf, 16, "'%c'", c);
        else
                (void) snprintf(buf, 16, "byte 0x%02x", u);
        return buf;
}

/* Non-empty, at most max bytes, made only of the characters in allowed (described for the reader). */
static int check_chars_quoted(const char *field, const char *value, const char *allowed, size_t max,
                              const char *allowed_desc, const char *(*quote)(char *, const char *), HydraError *err) {
        char q[QUOTE_BUF_SIZE], c[16];
        size_t n = strspn(value, allowed), len = strlen(value);

        if (len == 0)
                return hydra_error_set(err, -EINVAL, "%s: empty (allowed: %s)", field, allowed_desc);
        if (value[n] != '\0')
                return hydra_error_set(err, -EINVAL, "%s: '%s' contains %s (allowed: %s)", field, quote(q, value),
                                       field_describe_char(c, value[n]), allowed_desc);
        if (len > max)
                return hydra_error_set(err, -EINVAL, "%s: '%s' is %zu bytes long (allowed: at most %zu bytes)", field,
                                       quote(q, value), len, max);
        return 0;
}

static int check_chars(const char *field, const char *value, const char *allowed, size_t max,
                       const char *allowed_desc, HydraError *err) {
        return check_chars_quoted(field, value, allowed, max, allowed_desc, field_quote, err);
}

int field_check_guest_url(const char *field, const char *url, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        const char *host;
        size_t authority;
        int r;

        r = check_chars_quoted(field, url, LOWER UPPER DIGITS "-._~:/?#[]@!&()*+,;=%", MAX_URL,
                               "an http:// or https:// URL of URL characters; percent-encode blanks, quotes, '$', '{', "
                               "'}', '|', '\\', '^' and '`'",
                               field_quote_url, err);
        if (r < 0)
                return r;
        if (strncmp(url, "https://", 8) == 0)
                host = url + 8;
        else if (strncmp(url, "http://", 7) == 0)
                host = url + 7;
        else
                return hydra_error_set(err, -EINVAL, "%s: '%s' has an unsupported scheme (allowed: http://, https://)",
                                       field, field_quote_url(q, url));
        if (strchr("/?#@:", host[0]))
                return hydra_error_set(err, -EINVAL, "%s: '%s' has no host (allowed: SCHEME://HOST/PATH)", field,
                                       field_quote_url(q, url));
        authority = strcspn(host, "/?#");
        if (memchr(host, '@', authority))
                /* Not quoted: what precedes '@' may be a password. */
                return hydra_error_set(err, -EINVAL,
                                       "%s: the URL contains credentials (user@ or user:password@ before the host), "
                                       "which would end up in the guest's configuration",
                                       field);
        return 0;
}

int field_check_guest_path(const char *field, const char *path, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        int r;

        r = check_chars(field, path, LOWER UPPER DIGITS "/._+-@:~", MAX_PATH,
                        "an absolute path of letters, digits and '/', '.', '_', '+', '-', '@', ':', '~'", err);
        if (r < 0)
                return r;
        if (path[0] != '/' || path[strspn(path, "/")] == '\0')
                return hydra_error_set(err, -EINVAL, "%s: '%s' is not an absolute path below / (allowed: /DIR...)",
                                       field, field_quote(q, path));
        for (const char *p = path; *p;) {
                size_t len;

                p += strspn(p, "/");
                len = strcspn(p, "/");
                if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
                        return hydra_error_set(err, -EINVAL,
                                               "%s: '%s' has a '.' or '..' component (allowed: a plain absolute "
                                               "path)",
                                               field, field_quote(q, path));
                p += len;
        }
        return 0;
}

int field_check_hostname(const char *field, const char *hostname, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        int r;

        r = check_chars(field, hostname, LOWER UPPER DIGITS ".-", 253, "letters, digits, '-' and '.'", err);
        if (r < 0)
                return r;
        for (const char *label = hostname;;) {
                size_t len = strcspn(label, ".");

                if (len == 0 || len > 63)
                        return hydra_error_set(err, -EINVAL,
                                               "%s: '%s' has an empty label or one longer than 63 characters "
                                               "(allowed: labels joined by single dots, no trailing dot)",
                                               field, field_quote(q, hostname));
                if (label[0] == '-' || label[len - 1] == '-')
                        return hydra_error_set(err, -EINVAL, "%s: '%s' has a label starting or ending with '-'",
                                               field, field_quote(q, hostname));
                if (label[len] == '\0')
                        return 0;
                label += len + 1;
        }
}

int field_check_username(const char *field, const char *username, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        size_t n = strlen(username);

        if (n == 0 || n > 32 || !((username[0] >= 'a' && username[0] <= 'z') || username[0] == '_') ||
            strspn(username, LOWER DIGITS "_-") != n)
                return hydra_error_set(err, -EINVAL, "%s: '%s' is not a valid user name (allowed: up to 32 of a-z, "
                                       "0-9, '_', '-', starting with a letter or '_')",
                                       field, field_quote(q, username));
        return 0;
}

int field_check_password_hash(const char *field, const char *hash, HydraError *err) {
        size_t n = strlen(hash);

        if (n < 4 || n > 512 || hash[0] != '$' || strspn(hash, LOWER UPPER DIGITS "./$=+-") != n)
                return hydra_error_set(err, -EINVAL, "%s: not a crypt(3) hash (allowed: $id$salt$hash, e.g. from "
                                       "`openssl passwd -6` or mkpasswd; value not shown)",
                                       field);
        return 0;
}

int field_check_ssh_key(const char *field, const char *key, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        size_t n = strlen(key);

        for (const char *p = key; *p; p++)
                if ((unsigned char) *p < 0x20 || *p == 0x7f)
                        return hydra_error_set(err, -EINVAL, "%s: '%s' contains a control character (allowed: one "
                                               "OpenSSH public key line)",
                                               field, field_quote(q, key));
        if (!utf8_valid(key, strlen(key)))
                return hydra_error_set(err, -EINVAL, "%s: '%s' is not valid UTF-8", field, field_quote(q, key));
        if (n > MAX_SSH_KEY)
                return hydra_error_set(err, -EINVAL, "%s: '%s' is %zu bytes long (allowed: at most %u bytes)", field,
                                       field_quote(q, key), n, MAX_SSH_KEY);
        if (strncmp(key, "ssh-", 4) != 0 && strncmp(key, "ecdsa-", 6) != 0 && strncmp(key, "sk-", 3) != 0)
                return hydra_error_set(err, -EINVAL, "%s: '%s' is not an OpenSSH public key (allowed: a line "
                                       "starting with ssh-, ecdsa- or sk-)",
                                       field, field_quote(q, key));
        return 0;
}

int field_check_k3s_version(const char *field, const char *version, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        int r;

        r = check_chars(field, version, LOWER UPPER DIGITS ".+_-", 64, "a k3s release such as v1.32.6+k3s1", err);
        if (r < 0)
                return r;
        if (version[0] == '-' || strcmp(version, ".") == 0 || strcmp(version, "..") == 0)
                return hydra_error_set(err, -EINVAL, "%s: '%s' is not a k3s release (allowed: a release such as "
                                       "v1.32.6+k3s1, not starting with '-')",
                                       field, field_quote(q, version));
        return 0;
}

int field_check_package(const char *field, const char *name, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        size_t n = strlen(name);

        if (n < 2 || n > 128 || !strchr(LOWER DIGITS, name[0]) || strspn(name, LOWER DIGITS "+.-") != n)
                return hydra_error_set(err, -EINVAL, "%s: '%s' is not a Debian package name (allowed: 2-128 of a-z, "
                                       "0-9, '+', '.', '-', starting with a-z or 0-9)",
                                       field, field_quote(q, name));
        return 0;
}

int field_check_image_ref(const char *field, const char *ref, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        int r;

        r = check_chars(field, ref, LOWER UPPER DIGITS "._-/:@", 255,
                        "an image reference such as registry.k8s.io/pause:3.6", err);
        if (r < 0)
                return r;
        if (!strchr(LOWER UPPER DIGITS, ref[0]))
                return hydra_error_set(err, -EINVAL, "%s: '%s' is not an image reference (allowed: starting with a "
                                       "letter or digit, such as registry.k8s.io/pause:3.6)",
                                       field, field_quote(q, ref));
        return 0;
}

int field_check_sha256(const char *field, const char *hex, HydraError *err) {
        char q[QUOTE_BUF_SIZE];

        if (strlen(hex) != 64 || strspn(hex, DIGITS "abcdefABCDEF") != 64)
                return hydra_error_set(err, -EINVAL, "%s: '%s' is not a SHA-256 digest (allowed: 64 hex digits)",
                                       field, field_quote(q, hex));
        return 0;
}

int field_check_ipv4(const char *field, const char *value, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        struct in_addr a;

        /* inet_pton takes exactly four decimal parts, nothing else (no blanks, no control characters). */
        if (strlen(value) >= INET_ADDRSTRLEN || inet_pton(AF_INET, value, &a) != 1)
                return hydra_error_set(err, -EINVAL, "%s: '%s' is not an IPv4 address (allowed: a dotted quad such "
                                       "as 10.0.2.15)",
                                       field, field_quote(q, value));
        return 0;
}

int field_check_mac(const char *field, const char *value, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        unsigned b[6];
        char end;

        if (strlen(value) != 17 ||
            sscanf(value, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &end) != 6 ||
            strspn(value, "0123456789abcdefABCDEF:") != 17)
                return hydra_error_set(err, -EINVAL, "%s: '%s' is not a MAC address (allowed: xx:xx:xx:xx:xx:xx)",
                                       field, field_quote(q, value));
        if (b[0] & 1)
                return hydra_error_set(err, -EINVAL, "%s: '%s' is a multicast address (allowed: a unicast address; "
                                       "the first byte must be even)",
                                       field, value);
        return 0;
}
