/* The all-reduce on its own: MPI_Allreduce (sum) of N float32 values, each one started right
 * after a barrier so that no rank waits for a slower one, as `gandist bench`'s all-reduce time
 * does. Prints the median and the fastest of REPS (each the slowest rank's time), in ms.
 *   mpicc -O2 -o allreduce-wire allreduce-wire.c && mpirun -n 2 ./allreduce-wire N REPS
 * Used by docs/scripts/allreduce-nodes.sh. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    long n = argc > 1 ? atol(argv[1]) : 0;
    int reps = argc > 2 ? atoi(argv[2]) : 0;
    if (n <= 0 || reps <= 0) {
        if (rank == 0) fprintf(stderr, "usage: allreduce-wire N_FLOATS REPS (both positive)\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    float *send = malloc(n * sizeof *send), *recv = malloc(n * sizeof *recv);
    double *times = malloc(reps * sizeof *times);
    if (!send || !recv || !times) MPI_Abort(MPI_COMM_WORLD, 1);
    for (long i = 0; i < n; i++) send[i] = (float)(i % 1000) * 1e-3f;
    for (int r = -3; r < reps; r++) { /* 3 untimed rounds first */
        MPI_Barrier(MPI_COMM_WORLD);
        double t = MPI_Wtime();
        MPI_Allreduce(send, recv, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        t = MPI_Wtime() - t;
        double slowest;
        MPI_Reduce(&t, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        if (r >= 0) times[r] = slowest;
    }
    if (rank == 0) {
        qsort(times, reps, sizeof *times, by_value);
        printf("allreduce-wire: %ld floats (%.2f MB), %d reps: median %.3f ms, fastest %.3f ms\n",
               n, n * 4e-6, reps, times[reps / 2] * 1e3, times[0] * 1e3);
    }
    free(send); free(recv); free(times);
    MPI_Finalize();
    return 0;
}
