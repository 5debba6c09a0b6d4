/* SPDX-License-Identifier: MIT */
#pragma once

#include <crypt.h>
#include <stdbool.h>

#include "error.h"

/* The longest password libcrypt hashes (crypt_rn() refuses CRYPT_MAX_PASSPHRASE_SIZE bytes and more, with
 * ERANGE). hydrad has the same limit. */
#define PASSWORD_MAX_BYTES (CRYPT_MAX_PASSPHRASE_SIZE - 1)

/* Guest password hashes (libcrypt). hydractl never sends a cleartext password: it sends one of these. Errors
 * never quote the password. */

/* A yescrypt hash ("$y$...") of password with a fresh random salt. */
int password_hash_yescrypt(const char *password, char **ret_hash, HydraError *err);

/* The SHA-512 crypt hash ("$6$SALT$...") that `openssl passwd -6 -salt SALT` prints for password, as start-vm.sh
 * makes it: the same salt gives the same hash, so a VM migrated from the script keeps its password. */
int password_hash_sha512(const char *password, const char *salt, char **ret_hash, HydraError *err);

/* True if hash is a crypt(3) hash of password. */
bool password_verify(const char *password, const char *hash);

/* Overwrites s (up to its NUL) with zeros, then frees it. Accepts NULL. */
void password_free(char *s);
