/*
 * The pod sandbox ("pause") container of knat's test images (integration/images/build.sh;
 * test support, not shipped). As PID 1 of a pod it holds the pod's namespaces, reaps the
 * zombies reparented to it, and exits 0 on SIGTERM or SIGINT. `pause -v` prints the version.
 *
 *   gcc -static -O2 -s -o pause integration/images/pause.c
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef VERSION
#define VERSION "3.10"
#endif

/* A handler, not SIG_DFL: signals whose action is the default are dropped for a namespace's
 * PID 1. The signals stay blocked and are taken by sigwait() below. */
static void noop(int sig) { (void)sig; }

int main(int argc, char **argv) {
  sigset_t set;
  int sig;

  if (argc > 1 && strcmp(argv[1], "-v") == 0) {
    printf("pause.c %s (knat test image)\n", VERSION);
    return 0;
  }
  if (getpid() != 1)
    fprintf(stderr, "pause: warning: not PID 1; only this process's own children are reaped\n");

  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &set, NULL) != 0) {
    perror("pause: sigprocmask");
    return 1;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = noop;
  if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0 ||
      sigaction(SIGCHLD, &sa, NULL) != 0) {
    perror("pause: sigaction");
    return 1;
  }
  /* Children that ended before the mask was in place sent no SIGCHLD this loop will see. */
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }

  for (;;) {
    if (sigwait(&set, &sig) != 0)
      continue;
    if (sig == SIGCHLD) {
      while (waitpid(-1, NULL, WNOHANG) > 0) {
      }
      continue;
    }
    fprintf(stderr, "pause: got %s, exiting\n", strsignal(sig));
    return 0;
  }
}
