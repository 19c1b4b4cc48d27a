{{/*
Chart name, or nameOverride.
*/}}
{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: "<release>-<chart>", or the release name when it already contains the chart
name, or fullnameOverride. The client-facing Service carries exactly this name.
*/}}
{{- define "switchboard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of one component's object: "<fullname>-<suffix>". The full name is cut to 40
characters first so that suffixed names, StatefulSet pod names and their
controller-revision-hash labels stay within 63.
Usage: include "switchboard.componentName" (dict "root" $ "suffix" "chat")
*/}}
{{- define "switchboard.componentName" -}}
{{- printf "%s-%s" (include "switchboard.fullname" .root | trunc 40 | trimSuffix "-") .suffix }}
{{- end }}

{{/*
"name-version" for the helm.sh/chart label.
*/}}
{{- define "switchboard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of one component (chat, redis or lb). They never change for the life of
a release, so Deployments and StatefulSets can select on them.
Usage: include "switchboard.selectorLabels" (dict "root" $ "component" "chat")
*/}}
{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Every label of one component's objects. component "" leaves the component label out
(for objects that belong to the release as a whole).
Usage: include "switchboard.labels" (dict "root" $ "component" "chat")
*/}}
{{- define "switchboard.labels" -}}
helm.sh/chart: {{ include "switchboard.chart" .root }}
{{- if .component }}
{{ include "switchboard.selectorLabels" . }}
{{- else }}
app.kubernetes.io/name: {{ include "switchboard.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}
app.kubernetes.io/version: {{ include "switchboard.imageTag" .root | trunc 63 | quote }}
app.kubernetes.io/part-of: switchboard
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Tag of the chat image.
*/}}
{{- define "switchboard.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}; the digest wins over the tag.
Usage: include "switchboard.image" (dict "image" .Values.redis.image "defaultTag" "")
*/}}
{{- define "switchboard.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (.image.tag | default .defaultTag | toString) }}
{{- end }}
{{- end }}

{{/*
Service account of every pod.
*/}}
{{- define "switchboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchboard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Port number of a "host:port" listen address ("0.0.0.0:6000", "[::]:6000").
*/}}
{{- define "switchboard.portOf" -}}
{{- splitList ":" (toString .) | last | int }}
{{- end }}

{{/*
Name of the Secret that holds the Redis password.
*/}}
{{- define "switchboard.redis.secretName" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecret }}
{{- else }}
{{- include "switchboard.componentName" (dict "root" . "suffix" "redis") }}
{{- end }}
{{- end }}

{{/*
Host of the chart's Redis (its headless Service; the short name, so the manifests stay
valid when kustomize moves them to another namespace).
*/}}
{{- define "switchboard.redis.host" -}}
{{- include "switchboard.componentName" (dict "root" . "suffix" "redis") }}
{{- end }}

{{/*
Environment variables that point a chat container at Redis: REDIS_PASSWORD from the
Secret, then SWITCHBOARD_REDIS_URL built from it with Kubernetes' $(VAR) expansion, so
the password never appears in the pod spec.
*/}}
{{- define "switchboard.redis.env" -}}
{{- if eq .Values.redis.mode "cluster" }}
{{- include "switchboard.redis.clusterEnv" . }}
{{- else if ne .Values.redis.mode "standalone" }}
{{- fail (printf "redis.mode %q: standalone or cluster" .Values.redis.mode) }}
{{- else if .Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "switchboard.redis.secretName" . }}
      key: {{ .Values.redis.existingSecretPasswordKey }}
- name: SWITCHBOARD_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:%d" (include "switchboard.redis.host" .) (int .Values.redis.port) | quote }}
{{- else if .Values.redis.externalUrlSecret.name }}
- name: SWITCHBOARD_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.externalUrlSecret.name }}
      key: {{ .Values.redis.externalUrlSecret.key }}
{{- else if .Values.redis.externalUrl }}
- name: SWITCHBOARD_REDIS_URL
  value: {{ .Values.redis.externalUrl | quote }}
{{- else }}
{{- fail "redis.enabled is false: set redis.externalUrl or redis.externalUrlSecret.name (without Redis every chat pod would run its own in-memory backend and they would not see each other)" }}
{{- end }}
{{- end }}

{{/*
The chat settings as SWITCHBOARD_* environment variables, one per key of .Values.config.
Numbers are printed as integers (Helm reads YAML numbers as floats, and "%v" of a large
float is "2e+07").
*/}}
{{- define "switchboard.config.env" -}}
{{- range $key, $value := .Values.config }}
{{- if not (has $key (list "proxyProtocol" "redisWaitReplicas")) }}
- name: {{ printf "SWITCHBOARD_%s" (snakecase $key | upper) }}
{{- if or (kindIs "float64" $value) (kindIs "int" $value) (kindIs "int64" $value) }}
  value: {{ printf "%d" (int64 $value) | quote }}
{{- else }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- /* Its default (null) depends on the mode, and Helm drops null values: set apart. */}}
- name: SWITCHBOARD_PROXY_PROTOCOL
  value: {{ include "switchboard.proxyProtocol" . | quote }}
- name: SWITCHBOARD_REDIS_WAIT_REPLICAS
  value: {{ include "switchboard.redisWaitReplicas" . | quote }}
{{- end }}

{{/*
Whether the chat pods expect PROXY headers: "true" or "false". config.proxyProtocol null
means on in mode nginx (nginx sends them) and off in mode service.
*/}}
{{- define "switchboard.proxyProtocol" -}}
{{- $v := get .Values.config "proxyProtocol" }}
{{- if or (kindIs "invalid" $v) (eq (toString $v) "") }}
{{- eq .Values.loadBalancer.mode "nginx" }}
{{- else }}
{{- $v }}
{{- end }}
{{- end }}

{{/*
Default topology spread of one component: best effort over nodes and zones.
Usage: include "switchboard.topologySpread" (dict "root" $ "component" "chat")
*/}}
{{- define "switchboard.topologySpread" -}}
{{- $root := .root }}
{{- $component := .component }}
{{- range list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
- maxSkew: 1
  topologyKey: {{ . }}
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "switchboard.selectorLabels" (dict "root" $root "component" $component) | nindent 6 }}
  matchLabelKeys:
    - pod-template-hash
{{- end }}
{{- end }}

{{/*
Checks that hold across sections; called from the chat Deployment.
*/}}
{{/*
Bytes of a Kubernetes memory quantity: a plain number, or one with a binary (Ki, Mi, Gi,
Ti) or decimal (k, M, G, T) suffix; values.schema.json admits nothing else.
*/}}
{{- define "switchboard.quantityBytes" -}}
{{- $q := toString . }}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q }}
{{- $unit := trimPrefix $num $q }}
{{- $mult := get (dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000) $unit }}
{{- if or (not $num) (not $mult) }}
{{- fail (printf "chat.resources.limits.memory %q is not a memory quantity this chart understands (e.g. 512Mi, 1Gi, 600M)" $q) }}
{{- end }}
{{- mulf (float64 $num) (float64 $mult) | int64 }}
{{- end }}

{{/*
The memory a chat pod needs, in bytes: chat.memoryModel.baselineMiB +
config.maxConnections × chat.memoryModel.perConnectionBytes + config.argon2Slots ×
config.argon2MemoryKib (docs/configuration.md, "Memory").
*/}}
{{- define "switchboard.chatMemoryBytes" -}}
{{- $m := .Values.chat.memoryModel }}
{{- $base := mul (int64 $m.baselineMiB) 1048576 }}
{{- $conns := mul (int64 .Values.config.maxConnections) (int64 $m.perConnectionBytes) }}
{{- $slots := mul (int64 .Values.config.argon2Slots) (int64 .Values.config.argon2MemoryKib) 1024 }}
{{- add $base $conns $slots }}
{{- end }}

{{- define "switchboard.validate" -}}
{{- with (dig "resources" "limits" "memory" "" .Values.chat) }}
{{- $limit := include "switchboard.quantityBytes" . | int64 }}
{{- $need := include "switchboard.chatMemoryBytes" $ | int64 }}
{{- if lt $limit $need }}
{{- fail (printf "chat.resources.limits.memory (%s = %d MiB) cannot hold chat.memoryModel.baselineMiB (%d) + config.maxConnections (%d) × chat.memoryModel.perConnectionBytes (%d) + config.argon2Slots (%d) × config.argon2MemoryKib (%d KiB) = %d MiB; raise the limit or lower maxConnections / argon2Slots / argon2MemoryKib" (toString .) (div $limit 1048576) (int64 $.Values.chat.memoryModel.baselineMiB) (int64 $.Values.config.maxConnections) (int64 $.Values.chat.memoryModel.perConnectionBytes) (int64 $.Values.config.argon2Slots) (int64 $.Values.config.argon2MemoryKib) (div (add $need 1048575) 1048576)) }}
{{- end }}
{{- end }}
{{- $grace := int .Values.chat.terminationGracePeriodSeconds }}
{{- $needed := add (int .Values.chat.preStopSleepSeconds) (int .Values.config.drainTimeoutSecs) }}
{{- if le $grace $needed }}
{{- fail (printf "chat.terminationGracePeriodSeconds (%d) must be greater than chat.preStopSleepSeconds + config.drainTimeoutSecs (%d), or the kubelet kills draining pods" $grace $needed) }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- $cm := .Values.tls.certManager }}
{{- if and (not .Values.tls.secretName) (not $cm.issuer.name) }}
{{- fail "tls.enabled needs tls.secretName (an existing kubernetes.io/tls Secret) or tls.certManager.issuer.name (cert-manager issues one)" }}
{{- end }}
{{- if and $cm.issuer.name (not $cm.dnsNames) }}
{{- fail "tls.certManager.issuer needs tls.certManager.dnsNames: the names clients connect to" }}
{{- end }}
{{- end }}
{{- if eq .Values.loadBalancer.mode "nginx" }}
{{- $idle := int .Values.config.idleTimeoutSecs }}
{{- $proxy := int .Values.loadBalancer.nginx.proxyTimeoutSeconds }}
{{- if and (gt $idle 0) (le $proxy (div $idle 2)) }}
{{- fail (printf "loadBalancer.nginx.proxyTimeoutSeconds (%d) must be longer than the client ping interval, config.idleTimeoutSecs / 2 (%d)" $proxy (div $idle 2)) }}
{{- end }}
{{- if and .Values.loadBalancer.nginx.acceptProxyProtocol (not .Values.loadBalancer.nginx.trustedCidrs) }}
{{- fail "loadBalancer.nginx.acceptProxyProtocol needs loadBalancer.nginx.trustedCidrs (the load balancer's addresses), or every client could claim any address" }}
{{- end }}
{{- if and .Values.loadBalancer.nginx.acceptProxyProtocol (ne (include "switchboard.proxyProtocol" .) "true") }}
{{- fail "loadBalancer.nginx.acceptProxyProtocol needs config.proxyProtocol on (null or true): nginx can only pass the client address on in a PROXY header" }}
{{- end }}
{{- if and (not .Values.loadBalancer.nginx.staticServers) (not .Values.loadBalancer.nginx.resolver) }}
{{- fail "loadBalancer.nginx.resolver is empty: `server ... resolve` needs a resolver (only staticServers work without one)" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Redis maxmemory: redis.maxmemory when set, else redis.maxmemoryPercent of
redis.resources.limits.memory in bytes (a Kubernetes quantity: 1Gi, 512Mi, 1.5G, 1073741824);
empty when neither applies (no cap).
*/}}
{{- define "switchboard.redis.maxmemory" -}}
{{- $r := .Values.redis }}
{{- if $r.maxmemory }}
{{- $r.maxmemory }}
{{- else if and (gt (int $r.maxmemoryPercent) 0) (dig "limits" "memory" "" ($r.resources | default dict)) }}
{{- $q := toString $r.resources.limits.memory }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$" $q) }}
{{- fail (printf "redis.resources.limits.memory %q: use a plain Kubernetes quantity (e.g. 1Gi) or set redis.maxmemory" $q) }}
{{- end }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $q }}
{{- $units := dict "" 1.0 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 }}
{{- $unit := get $units (trimPrefix $number $q) }}
{{- printf "%d" (int64 (divf (mulf (float64 $number) $unit (int $r.maxmemoryPercent)) 100)) }}
{{- end }}
{{- end }}

{{/*
Cluster mode: SWITCHBOARD_REDIS_CLUSTER_NODES, every pod of the bundled cluster as a seed
(by its stable DNS name), or redis.external.clusterNodes; REDIS_PASSWORD first, for $(VAR).
*/}}
{{- define "switchboard.redis.clusterEnv" -}}
{{- $r := .Values.redis }}
{{- if $r.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "switchboard.redis.secretName" . }}
      key: {{ $r.existingSecretPasswordKey }}
- name: SWITCHBOARD_REDIS_CLUSTER_NODES
  value: {{ include "switchboard.redis.clusterSeeds" . | quote }}
{{- else if $r.external.clusterNodes }}
{{- if $r.external.passwordSecret.name }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $r.external.passwordSecret.name }}
      key: {{ $r.external.passwordSecret.key }}
{{- end }}
- name: SWITCHBOARD_REDIS_CLUSTER_NODES
  value: {{ $r.external.clusterNodes | quote }}
{{- else }}
{{- fail "redis.mode cluster with redis.enabled false: set redis.external.clusterNodes" }}
{{- end }}
{{- end }}

{{/*
Number of pods of the bundled Redis Cluster.
*/}}
{{- define "switchboard.redis.clusterPods" -}}
{{- mul (int .Values.redis.cluster.masters) (add 1 (int .Values.redis.cluster.replicasPerMaster)) }}
{{- end }}

{{/*
Host of pod I of the bundled Redis (StatefulSet pod DNS name through the headless Service).
*/}}
{{- define "switchboard.redis.podHost" -}}
{{- $name := include "switchboard.componentName" (dict "root" .root "suffix" "redis") }}
{{- printf "%s-%d.%s" $name (int .i) $name }}
{{- end }}

{{/*
redis:// seed URLs of every pod of the bundled cluster, comma-separated.
*/}}
{{- define "switchboard.redis.clusterSeeds" -}}
{{- $root := . }}
{{- $urls := list }}
{{- range $i := until (include "switchboard.redis.clusterPods" . | int) }}
{{- $urls = append $urls (printf "redis://:$(REDIS_PASSWORD)@%s:%d" (include "switchboard.redis.podHost" (dict "root" $root "i" $i)) (int $root.Values.redis.port)) }}
{{- end }}
{{- join "," $urls }}
{{- end }}

{{/*
SWITCHBOARD_REDIS_WAIT_REPLICAS: config.redisWaitReplicas, or when null 1 in cluster mode
(an acknowledged message then survives its master's failure) and 0 otherwise.
*/}}
{{- define "switchboard.redisWaitReplicas" -}}
{{- $v := get .Values.config "redisWaitReplicas" }}
{{- if or (kindIs "invalid" $v) (eq (toString $v) "") }}
{{- if eq .Values.redis.mode "cluster" }}1{{ else }}0{{ end }}
{{- else }}
{{- printf "%d" (int64 $v) }}
{{- end }}
{{- end }}

{{/*
The Secret (kubernetes.io/tls) holding the chat port's certificate: tls.secretName, or the
one the cert-manager Certificate writes.
*/}}
{{- define "switchboard.tls.secretName" -}}
{{- .Values.tls.secretName | default (printf "%s-tls" (include "switchboard.fullname" .)) }}
{{- end }}

{{/*
Whether the chart creates a cert-manager Certificate: an issuer is named and the cluster
serves cert-manager.io/v1 (like the ServiceMonitor, nothing is rendered without the CRD).
*/}}
{{- define "switchboard.tls.certificate" -}}
{{- if and .Values.tls.enabled .Values.tls.certManager.issuer.name (.Capabilities.APIVersions.Has "cert-manager.io/v1") }}true{{ end }}
{{- end }}

{{/*
Checksum of where the Redis password comes from, as a pod annotation: rotating it (a new
redis.password, or new data in redis.existingSecret / redis.externalUrlSecret, read at
install/upgrade time with lookup) rolls the pods that use it on the next `helm upgrade`. A
password the chart generated is kept across upgrades, so it does not count. `helm template`
cannot look Secrets up: there only redis.password counts.
*/}}
{{- define "switchboard.redis.secretChecksum" -}}
{{- $r := .Values.redis -}}
{{- $data := dict "password" $r.password -}}
{{- if and $r.enabled $r.existingSecret -}}
{{- $s := lookup "v1" "Secret" .Release.Namespace $r.existingSecret -}}
{{- $_ := set $data "existing" (get $s "data" | default dict) -}}
{{- end -}}
{{- if and (not $r.enabled) $r.externalUrlSecret.name -}}
{{- $s := lookup "v1" "Secret" .Release.Namespace $r.externalUrlSecret.name -}}
{{- $_ := set $data "external" (get $s "data" | default dict) -}}
{{- end -}}
{{- $data | toJson | sha256sum -}}
{{- end }}
