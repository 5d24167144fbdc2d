;; busy-loop: spins forever without calling the host. Only a signal stops it.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $forever (br $forever))))
