/* comm_mpi.h: the MPI communicator under an rt_comm, for what goes through MPI whatever the collectives'
 * backend (MPI-IO checkpoints). */
#ifndef RT_COMM_MPI_H
#define RT_COMM_MPI_H

#include <mpi.h>

#include "comm.h"

/* The MPI communicator of the same ranks, in the same order (owned by comm). */
MPI_Comm rt_comm_mpi_handle(rt_comm *comm);

#endif
