/* The program pam_exec runs: starts the Python session hook with a fixed environment.
 *
 * pam_exec runs its command as root with the whole PAM environment, and on Debian's stock sshd stack that
 * holds the user's ~/.pam_environment by close_session. A dynamically linked root process started with that
 * environment is the user's (LD_PRELOAD, LD_AUDIT, LD_LIBRARY_PATH, GCONV_PATH, ...). So this program is
 * linked statically against musl: no dynamic loader runs, and musl reads no variable at start-up (no
 * tunables, no locale, no NSS). It execs the hook under /usr/bin/python3 -I -S with PATH and a few PAM
 * names, nothing else.
 *
 * Of each PAM name it passes the last occurrence: pam_exec appends the PAM items (PAM_SERVICE, PAM_USER,
 * PAM_RHOST, PAM_TTY) and PAM_TYPE after the PAM environment, so a user's variable of the same name comes
 * first and loses. SSH_CONNECTION and SSH_AUTH_INFO_0 are PAM environment variables, which a user can
 * replace at close: the hook takes them as hints only, and checks what matters against the system.
 *
 * It always exits 0 (a session hook must not fail a login), and it reports a failed exec to syslog.
 */
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#ifndef PYTHON
#define PYTHON "/usr/bin/python3"
#endif
#ifndef HOOK
#define HOOK "/usr/share/idle-reaper/hooks/pam-session"
#endif

/* Longer values are dropped, not cut: the hook never sees a value the PAM stack didn't hold. */
#define MAX_VALUE 4096
/* The PAM line's own arguments (--state-dir DIR, --config PATH): a few at most. */
#define MAX_ARGS 8

static const char *const passed[] = {
    "PAM_TYPE", "PAM_SERVICE", "PAM_USER", "PAM_RHOST", "PAM_TTY", "SSH_CONNECTION", "SSH_AUTH_INFO_0",
};
#define PASSED (sizeof passed / sizeof passed[0])

extern char **environ;

/* Return the last "NAME=value" entry of the environment, or NULL (also for an overlong value). */
static char *last(const char *name)
{
    size_t n = strlen(name);
    char *found = NULL;
    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            found = *e;
    }
    if (found && strlen(found + n + 1) > MAX_VALUE)
        return NULL;
    return found;
}

int main(int argc, char **argv)
{
    char *env[PASSED + 2];
    size_t k = 0;
    env[k++] = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";
    for (size_t i = 0; i < PASSED; i++) {
        char *entry = last(passed[i]);
        if (entry)
            env[k++] = entry;
    }
    env[k] = NULL;

    char *args[4 + MAX_ARGS + 1];
    size_t a = 0;
    args[a++] = PYTHON;
    args[a++] = "-I";
    args[a++] = "-S";
    args[a++] = HOOK;
    for (int i = 1; i < argc && i <= MAX_ARGS; i++)
        args[a++] = argv[i];
    args[a] = NULL;

    umask(022);
    if (chdir("/") == 0)
        execve(PYTHON, args, env);
    openlog("idle-reaper", LOG_PID, LOG_AUTHPRIV);
    syslog(LOG_ERR, "hook: cannot run %s %s: %m", PYTHON, HOOK);
    return 0;
}
