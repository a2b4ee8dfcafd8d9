from ._router cimport Router
# Declarations of the compiled delivery path (see _deliver.pyx).

cdef class Conn:
    cdef public object owner          # the session object (server.Client)
    cdef public list dirty_list       # the server's list of connections with queued output
    cdef public bytearray out         # queued output, written once per loop tick
    cdef public bint dirty, closed, echo, headers, no_responders, verbose, authed
    cdef public dict subs             # sid -> Sub
    cdef public long long msgs_in, msgs_out, bytes_out
    cdef public bint route            # a link to another worker process (see cluster.py)
    cdef public unsigned long long last_pub   # route de-duplication: last publish sequence sent
    cpdef write(self, bytes data)
    cpdef bytes take(self)
    cpdef Py_ssize_t pending(self)

cdef class Sub:
    cdef public Conn conn
    cdef public bytes sid
    cdef public bytes subject
    cdef public object queue          # bytes or None
    cdef public Py_ssize_t max        # 0 = unlimited (UNSUB <sid> <max>)
    cdef public Py_ssize_t delivered

cdef class Responder:
    cdef Router router
    cdef Conn conn
    cdef object subject               # the request's reply subject (bytes) or None
    cdef object on_output             # called after a reply was queued (Server.schedule_flush)
    cdef int queue(self, bytes body) except -1   # the reply without on_output (batched callers)
