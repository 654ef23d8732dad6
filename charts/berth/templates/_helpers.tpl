{{/* berth.name is the chart name, or nameOverride. */}}
{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* berth.fullname is the prefix of every resource name: <release>-berth, or fullnameOverride. */}}
{{- define "berth.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* berth.labels are the common labels; call with (dict "ctx" $ "component" "coord"). */}}
{{- define "berth.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: berth
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{ include "berth.selectorLabels" . }}
{{- end -}}

{{/* berth.selectorLabels select one component's pods. */}}
{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* berth.image is a Berth binary's image; call with (dict "ctx" $ "binary" "berth-coord"). */}}
{{- define "berth.image" -}}
{{- $v := .ctx.Values.image -}}
{{- $tag := default .ctx.Chart.AppVersion $v.tag -}}
{{- if $v.registry -}}
{{- printf "%s/%s/%s:%s" $v.registry $v.repository .binary $tag -}}
{{- else -}}
{{- printf "%s/%s:%s" $v.repository .binary $tag -}}
{{- end -}}
{{- end -}}

{{/* berth.coordPeerService is the headless Service of the coord members. */}}
{{- define "berth.coordPeerService" -}}
{{- printf "%s-coord-peer" (include "berth.fullname" .) -}}
{{- end -}}

{{/* berth.coordMember is member i's DNS name; call with (dict "ctx" $ "i" 0). */}}
{{- define "berth.coordMember" -}}
{{- printf "%s-coord-%d.%s.%s.svc.%s" (include "berth.fullname" .ctx) (int .i) (include "berth.coordPeerService" .ctx) .ctx.Release.Namespace .ctx.Values.clusterDomain -}}
{{- end -}}

{{/* berth.coordEndpoints are the members' client addresses, comma separated. */}}
{{- define "berth.coordEndpoints" -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.coord.replicas) -}}
{{- $eps = append $eps (printf "%s:%d" (include "berth.coordMember" (dict "ctx" $ "i" $i)) (int $.Values.coord.clientPort)) -}}
{{- end -}}
{{- join "," $eps -}}
{{- end -}}

{{/* berth.initialCluster is coord's --initial-cluster: name=peer address of every member. */}}
{{- define "berth.initialCluster" -}}
{{- $m := list -}}
{{- range $i := until (int .Values.coord.replicas) -}}
{{- $m = append $m (printf "%s-coord-%d=%s:%d" (include "berth.fullname" $) $i (include "berth.coordMember" (dict "ctx" $ "i" $i)) (int $.Values.coord.peerPort)) -}}
{{- end -}}
{{- join "," $m -}}
{{- end -}}

{{/* berth.natsURL is the NATS client URL. */}}
{{- define "berth.natsURL" -}}
{{- printf "nats://%s-nats:%d" (include "berth.fullname" .) (int .Values.nats.clientPort) -}}
{{- end -}}

{{/* berth.podAnnotations are a Berth pod's annotations: scrape annotations for its metrics
port, and podAnnotations; call with (dict "ctx" $ "port" 7390). */}}
{{- define "berth.podAnnotations" -}}
{{- if .ctx.Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- if .ctx.Values.tls.enabled }}
prometheus.io/scheme: https
{{- end }}
{{- end }}
{{- with .ctx.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* berth.probes are the liveness (/healthz) and readiness (/readyz) probes on the named
port; call with (dict "ctx" $ "port" "metrics"). With tls.enabled the endpoints speak HTTPS:
with tls.httpClientAuth they also require a client certificate, which the kubelet cannot
present, so the probes are TCP connects; without it they are HTTPS GETs (the kubelet does
not verify the server's certificate). */}}
{{- define "berth.probes" -}}
{{- $tls := .ctx.Values.tls -}}
{{- if and $tls.enabled $tls.httpClientAuth -}}
livenessProbe:
  tcpSocket:
    port: {{ .port }}
  {{- toYaml .ctx.Values.probes.liveness | nindent 2 }}
readinessProbe:
  tcpSocket:
    port: {{ .port }}
  {{- toYaml .ctx.Values.probes.readiness | nindent 2 }}
{{- else -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
    {{- if $tls.enabled }}
    scheme: HTTPS
    {{- end }}
  {{- toYaml .ctx.Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
    {{- if $tls.enabled }}
    scheme: HTTPS
    {{- end }}
  {{- toYaml .ctx.Values.probes.readiness | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* berth.commonArgs are the flags every pkg/config service takes. */}}
{{- define "berth.commonArgs" -}}
- --nats={{ include "berth.natsURL" . }}
- --coord={{ include "berth.coordEndpoints" . }}
- --log-format={{ .Values.log.format }}
- --log-level={{ .Values.log.level }}
{{- end -}}

{{/* berth.podEnv gives a container its pod's name and namespace. */}}
{{- define "berth.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}

{{/* berth.restrictedSecurity is the container security context of the stateless services. */}}
{{- define "berth.restrictedSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
{{- end -}}


{{/* berth.tlsSecret is the Secret (tls.crt, tls.key, ca.crt) of a TLS identity: tls.secrets.<key>,
or <fullname>-<id>-tls; call with (dict "ctx" $ "key" "cmdbSync" "id" "cmdb-sync"). */}}
{{- define "berth.tlsSecret" -}}
{{- $name := index .ctx.Values.tls.secrets .key -}}
{{- if not (kindIs "string" $name) -}}
{{- fail (printf "tls.secrets.%s: want a Secret name (a string), got %v" .key $name) -}}
{{- end -}}
{{- default (printf "%s-%s-tls" (include "berth.fullname" .ctx) .id) $name -}}
{{- end -}}

{{/* berth.natsAuthSecret is the Secret of nats-server.conf and the NATS seeds. */}}
{{- define "berth.natsAuthSecret" -}}
{{- default (printf "%s-nats-auth" (include "berth.fullname" .)) .Values.tls.nats.authSecret -}}
{{- end -}}

{{/* berth.tlsArgs are the TLS flags of a pkg/config service (its HTTP side, its coord and
NATS links, its NATS login as user and that user's reply inbox, as berth certs nats-config
names them); call with (dict "ctx" $ "user" "controller") only with tls.enabled. The files
are those of berth.tlsVolume under /etc/berth/tls. */}}
{{- define "berth.tlsArgs" -}}
- --http-cert-file=/etc/berth/tls/tls.crt
- --http-key-file=/etc/berth/tls/tls.key
{{- if .ctx.Values.tls.httpClientAuth }}
- --http-trusted-ca-file=/etc/berth/tls/ca.crt
{{- end }}
- --coord-cert-file=/etc/berth/tls/tls.crt
- --coord-key-file=/etc/berth/tls/tls.key
- --coord-trusted-ca-file=/etc/berth/tls/ca.crt
- --nats-cert-file=/etc/berth/tls/tls.crt
- --nats-key-file=/etc/berth/tls/tls.key
- --nats-trusted-ca-file=/etc/berth/tls/ca.crt
- --nats-nkey-seed-file=/etc/berth/tls/nats/{{ .user }}.nk
- --nats-inbox-prefix=_INBOX_{{ .user }}
{{- end -}}

{{/* berth.tlsVolume is the "tls" volume of a Berth pod: its identity's certificate, key and
CA (berth.tlsSecret) and the NATS seeds of users (a list; items of berth.natsAuthSecret, so
that a pod gets no other service's seed). Files are 0440: the pods run as root or with
fsGroup 65532. Call with (dict "ctx" $ "key" "controller" "id" "controller" "users" (list
"controller")). */}}
{{- define "berth.tlsVolume" -}}
- name: tls
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ include "berth.tlsSecret" . }}
          items:
            - {key: tls.crt, path: tls.crt}
            - {key: tls.key, path: tls.key}
            - {key: ca.crt, path: ca.crt}
      {{- with .users }}
      - secret:
          name: {{ include "berth.natsAuthSecret" $.ctx }}
          items:
            {{- range . }}
            - {key: {{ . }}.nk, path: nats/{{ . }}.nk}
            {{- end }}
      {{- end }}
{{- end -}}

{{/* berth.tlsMount mounts the "tls" volume at /etc/berth/tls. */}}
{{- define "berth.tlsMount" -}}
- name: tls
  mountPath: /etc/berth/tls
  readOnly: true
{{- end -}}
