# Declarations of the compiled router, shared with mq9fast/_deliver.pyx (see _router.pyx).

cdef class Match:
    cdef public list psubs       # plain subscriptions matching the subject
    cdef public list qgroups     # one list of members per queue group

cdef class _Node:
    cdef dict children           # literal token -> _Node
    cdef _Node pwc               # the '*' child
    cdef _Node fwc               # the '>' child
    cdef list psubs
    cdef dict qsubs              # queue name -> list of subscriptions
    cdef bint empty(self)

cdef class Router:
    cdef _Node _root
    cdef dict _cache             # subject -> Match, cleared on every insert/remove
    cdef unsigned long _rr
    cdef public Py_ssize_t count
    cpdef Match match(self, bytes subject)
    cpdef object pick(self, list group)
