# mesh on Nomad with Consul: Nomad registers each allocation in Consul
# (service "mesh", meta alloc_id = the node id), the nodes follow that
# service in observe mode through the client's Consul agent and talk to
# each other with mTLS on their own (Consul Connect's leaf, written by the
# template below: "native" Connect, no sidecar on the cluster port).
#
#   nomad var put nomad/jobs/mesh cookie="$(openssl rand -base64 32)"
#   nomad job run deploy/nomad/mesh.nomad.hcl
#
# The image is the one `Dockerfile` builds (`mesh-node`); replace it with
# your service's.
job "mesh" {
  type = "service"

  group "node" {
    count = 3

    network {
      mode = "bridge"
      port "peer" {
        to = 7000
      }
      port "admin" {
        to = 8080
      }
    }

    # Consul drops the allocation, then Nomad waits this long before the
    # kill signal: peers stop routing to it first (the preStop pause).
    shutdown_delay = "5s"

    service {
      name = "mesh" # fixed at submit time (Nomad interpolates it once)
      port = "peer"
      # The node id: NOMAD_ALLOC_INDEX is reused by canaries and
      # replacements, the allocation id is not.
      meta {
        alloc_id = "${NOMAD_ALLOC_ID}"
      }
      # Health = readiness: serving, not "joined".
      check {
        type     = "http"
        port     = "admin"
        path     = "/readyz"
        interval = "2s"
        timeout  = "1s"
      }
    }

    update {
      max_parallel     = 1
      min_healthy_time = "10s"
      healthy_deadline = "2m"
    }

    task "mesh" {
      driver = "docker"

      config {
        image = "mesh-node:0.1.0"
        ports = ["peer", "admin"]
      }

      # The image's STOPSIGNAL is SIGTERM; stated here for other drivers
      # (exec and raw_exec send SIGINT by default, which the node also
      # handles). The timeout covers the node's shutdown (at most 25 s).
      kill_signal  = "SIGTERM"
      kill_timeout = "35s"

      # Workload identity: a Consul token for the templates below.
      consul {}

      env {
        MESH_NODE_ID               = "${NOMAD_ALLOC_ID}"
        MESH_CLUSTER               = "mesh"
        MESH_LISTEN                = "0.0.0.0:7000"
        MESH_ADVERTISE             = "${NOMAD_HOST_ADDR_peer}"
        MESH_ADMIN                 = "0.0.0.0:8080"
        MESH_CAPABILITIES          = "game,chat"
        MESH_COOKIE_FILE           = "${NOMAD_SECRETS_DIR}/cookie"
        MESH_TLS_DIR               = "${NOMAD_SECRETS_DIR}/tls"
        MESH_SHUTDOWN_TIMEOUT_SECS = "25"
        MESH_CONSUL                = "http://${attr.unique.network.ip-address}:8500"
        MESH_CONSUL_MODE           = "observe"
        MESH_CONSUL_SERVICE        = "mesh"
        MESH_CONSUL_NODE_META      = "alloc_id"
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/cookie"
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/mesh\" }}{{ .cookie }}{{ end }}"
      }

      # The service's Connect identity, renewed by the template runner;
      # the node reloads the files when they change.
      template {
        destination = "${NOMAD_SECRETS_DIR}/tls/cert.pem"
        change_mode = "noop"
        data        = "{{ with caLeaf \"mesh\" }}{{ .CertPEM }}{{ end }}"
      }
      template {
        destination = "${NOMAD_SECRETS_DIR}/tls/key.pem"
        change_mode = "noop"
        data        = "{{ with caLeaf \"mesh\" }}{{ .PrivateKeyPEM }}{{ end }}"
      }
      template {
        destination = "${NOMAD_SECRETS_DIR}/tls/bundle.pem"
        change_mode = "noop"
        data        = "{{ range caRoots }}{{ .RootCertPEM }}{{ end }}"
      }

      resources {
        cpu    = 250
        memory = 256
      }
    }
  }
}
